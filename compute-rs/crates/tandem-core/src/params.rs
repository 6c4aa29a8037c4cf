//! Parameter specs and parsing. Params travel as strings (proto `map<string,
//! string>`); each op declares [`ParamSpec`]s and gets typed [`Params`].

use std::collections::BTreeMap;

use crate::error::{Error, Quoted, Result};

/// Most params one op may declare (the orchestrator accepts at most this
/// many per step).
pub const MAX_PARAMS: usize = 64;
/// Longest param name, in bytes.
pub const MAX_PARAM_NAME_BYTES: usize = 64;
/// Longest param value the orchestrator accepts, in bytes: the upper bound
/// of a string param's `max`, of defaults and of choices.
pub const MAX_PARAM_VALUE_BYTES: usize = 4096;

/// Mirror of `tandem.v1.ParamType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// Base-10 signed integer within `[min, max]`.
    Int,
    /// One of `choices`.
    Enum,
    /// `"true"` or `"false"`.
    Bool,
    /// Free text up to `max` bytes.
    String,
}

impl ParamType {
    /// Lower-case name used by the Python API: "int", "enum", "bool", "string".
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Int => "int",
            ParamType::Enum => "enum",
            ParamType::Bool => "bool",
            ParamType::String => "string",
        }
    }
}

/// One param of an op (mirror of `tandem.v1.ParamSpec`, what ListOps
/// reports): build it with [`ParamSpec::int`], [`ParamSpec::choice`],
/// [`ParamSpec::boolean`] or [`ParamSpec::string`], then
/// [`ParamSpec::required`] for one without a default.
///
/// Values arrive as strings and are parsed before the op runs: an int
/// outside `[min, max]` (or a string longer than `max` bytes) is
/// `PARAM_OUT_OF_RANGE` with `limit` = `[min, max]` in the error; a value
/// of the wrong type, an unknown choice, an unknown param name or a missing
/// required param is `PARAM_INVALID`. The op reads the parsed value with
/// [`Params::int`], [`Params::str`] or [`Params::bool`].
///
/// Fields can be read anywhere; outside this crate they are set only
/// through the constructors (fields may be added).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ParamSpec {
    /// `A-Z a-z 0-9 _ - .`, 1 to [`MAX_PARAM_NAME_BYTES`] bytes.
    pub name: &'static str,
    /// How the value is parsed.
    pub ty: ParamType,
    /// What it does, with its unit.
    pub description: String,
    /// Used when absent; empty when `required`.
    pub default: String,
    /// The caller must give a value (there is no default).
    pub required: bool,
    /// Int: smallest value. String: 0.
    pub min: i64,
    /// Int: largest value. String: most bytes.
    pub max: i64,
    /// Enum: the accepted values.
    pub choices: Vec<&'static str>,
}

impl ParamSpec {
    /// An integer in `[min, max]` (inclusive), `default` when absent.
    pub fn int(name: &'static str, description: impl Into<String>, default: i64, min: i64, max: i64) -> Self {
        ParamSpec {
            name,
            ty: ParamType::Int,
            description: description.into(),
            default: default.to_string(),
            required: false,
            min,
            max,
            choices: Vec::new(),
        }
    }

    /// One of `choices` (exact, case-sensitive match), `default` when absent.
    pub fn choice(
        name: &'static str,
        description: impl Into<String>,
        default: &'static str,
        choices: &[&'static str],
    ) -> Self {
        ParamSpec {
            name,
            ty: ParamType::Enum,
            description: description.into(),
            default: default.to_owned(),
            required: false,
            min: 0,
            max: 0,
            choices: choices.to_vec(),
        }
    }

    /// `"true"` or `"false"`, `default` when absent.
    pub fn boolean(name: &'static str, description: impl Into<String>, default: bool) -> Self {
        ParamSpec {
            name,
            ty: ParamType::Bool,
            description: description.into(),
            default: default.to_string(),
            required: false,
            min: 0,
            max: 0,
            choices: Vec::new(),
        }
    }

    /// Any UTF-8 text of at most `max_len` bytes (at most
    /// [`MAX_PARAM_VALUE_BYTES`]), `default` when absent.
    pub fn string(name: &'static str, description: impl Into<String>, default: &str, max_len: i64) -> Self {
        ParamSpec {
            name,
            ty: ParamType::String,
            description: description.into(),
            default: default.to_owned(),
            required: false,
            min: 0,
            max: max_len,
            choices: Vec::new(),
        }
    }

    /// Makes the param required: no default, `PARAM_INVALID` when absent.
    pub fn required(self) -> Self {
        ParamSpec { required: true, default: String::new(), ..self }
    }

    /// Checks the definition (for [`crate::Registry::with_op`]).
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let name = self.name;
        if name.is_empty() || name.len() > MAX_PARAM_NAME_BYTES {
            return Err(format!("the name must be 1 to {MAX_PARAM_NAME_BYTES} bytes"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
            return Err("the name must be A-Z a-z 0-9 _ - .".to_owned());
        }
        let value_ok = |v: &str| v.len() <= MAX_PARAM_VALUE_BYTES && !v.chars().any(char::is_control);
        match self.ty {
            ParamType::Int if self.min > self.max => {
                return Err(format!("min {} is more than max {}", self.min, self.max));
            }
            ParamType::Enum => {
                if self.choices.is_empty() {
                    return Err("an enum needs at least one choice".to_owned());
                }
                for (i, c) in self.choices.iter().enumerate() {
                    if c.is_empty() || !value_ok(c) {
                        return Err(format!(
                            "choice {c:?} must be 1 to {MAX_PARAM_VALUE_BYTES} bytes without control characters"
                        ));
                    }
                    if self.choices[..i].contains(c) {
                        return Err(format!("choice {c:?} is listed twice"));
                    }
                }
            }
            ParamType::String if self.min != 0 || self.max < 0 || self.max > MAX_PARAM_VALUE_BYTES as i64 => {
                return Err(format!("a string's max must be 0 to {MAX_PARAM_VALUE_BYTES} bytes (and min 0)"));
            }
            _ => {}
        }
        if self.required {
            if !self.default.is_empty() {
                return Err("a required param has no default".to_owned());
            }
        } else {
            if !value_ok(&self.default) {
                return Err("the default must be at most 4096 bytes without control characters".to_owned());
            }
            self.parse(&self.default).map_err(|e| format!("the default is not a valid value: {e}"))?;
        }
        Ok(())
    }

    fn parse(&self, raw: &str) -> Result<Value> {
        let invalid = |detail: String| Error::ParamInvalid { param: Quoted::new(self.name), detail };
        // The caller's value, as errors may quote it.
        let quoted = || Quoted::new(raw);
        match self.ty {
            ParamType::Int => {
                let v: i64 =
                    raw.parse().map_err(|_| invalid(format!("{} is not a base-10 integer", quoted().quoted())))?;
                if v < self.min || v > self.max {
                    return Err(Error::ParamOutOfRange {
                        param: Quoted::new(self.name),
                        value: quoted(),
                        min: self.min,
                        max: self.max,
                    });
                }
                Ok(Value::Int(v))
            }
            ParamType::Enum => {
                if self.choices.contains(&raw) {
                    Ok(Value::Str(raw.to_owned()))
                } else {
                    Err(invalid(format!("{} is not one of {}", quoted().quoted(), self.choices.join(", "))))
                }
            }
            ParamType::Bool => match raw {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(invalid(format!("{} is not \"true\" or \"false\"", quoted().quoted()))),
            },
            ParamType::String => {
                if raw.len() as i64 > self.max {
                    return Err(Error::ParamOutOfRange {
                        param: Quoted::new(self.name),
                        value: Quoted::new(&format!("({} bytes)", raw.len())),
                        min: self.min,
                        max: self.max,
                    });
                }
                Ok(Value::Str(raw.to_owned()))
            }
        }
    }
}

/// A parsed parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An `Int` param.
    Int(i64),
    /// A `Bool` param.
    Bool(bool),
    /// An `Enum` or `String` param.
    Str(String),
}

/// The parsed, validated parameters of one step: every declared param has a
/// value (given or default), of its declared type and within its range.
///
/// The accessors panic when asked for a param the op did not declare (or
/// with the wrong type): a bug in the op, which the runner catches and
/// answers `INTERNAL_ERROR`, like any panic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(BTreeMap<&'static str, Value>);

impl Params {
    /// Parses `raw` against `specs`: rejects unknown names, missing required
    /// params, bad types and out-of-range values; fills in defaults.
    pub fn parse<'a, I>(specs: &[ParamSpec], raw: I) -> Result<Params>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut out = BTreeMap::new();
        for (name, value) in raw {
            let Some(spec) = specs.iter().find(|s| s.name == name) else {
                let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                return Err(Error::ParamInvalid {
                    param: Quoted::new(name),
                    detail: if known.is_empty() {
                        "unknown param (this op takes none)".to_owned()
                    } else {
                        format!("unknown param (known: {})", known.join(", "))
                    },
                });
            };
            out.insert(spec.name, spec.parse(value)?);
        }
        for spec in specs {
            if out.contains_key(spec.name) {
                continue;
            }
            if spec.required {
                return Err(Error::ParamInvalid { param: Quoted::new(spec.name), detail: "is required".to_owned() });
            }
            out.insert(spec.name, spec.parse(&spec.default)?);
        }
        Ok(Params(out))
    }

    /// The int param `name` (declared by the op, so present), within its
    /// `[min, max]`.
    pub fn int(&self, name: &str) -> i64 {
        match self.0.get(name) {
            Some(Value::Int(v)) => *v,
            other => panic!("op bug: int param {name:?} not declared ({other:?})"),
        }
    }

    /// The bool param `name`.
    pub fn bool(&self, name: &str) -> bool {
        match self.0.get(name) {
            Some(Value::Bool(v)) => *v,
            other => panic!("op bug: bool param {name:?} not declared ({other:?})"),
        }
    }

    /// The enum or string param `name`.
    pub fn str(&self, name: &str) -> &str {
        match self.0.get(name) {
            Some(Value::Str(v)) => v,
            other => panic!("op bug: string param {name:?} not declared ({other:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Reason;

    fn specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("level", "", 3, 1, 22),
            ParamSpec::choice("fit", "", "contain", &["contain", "cover"]),
            ParamSpec::boolean("fast", "", false),
            ParamSpec::string("note", "", "", 4),
            ParamSpec::int("n", "", 0, 0, 9).required(),
        ]
    }

    fn parse(raw: &[(&str, &str)]) -> Result<Params> {
        Params::parse(&specs(), raw.iter().copied())
    }

    #[test]
    fn defaults_and_values() {
        let p = parse(&[("n", "5"), ("fast", "true")]).unwrap();
        assert_eq!(p.int("level"), 3);
        assert_eq!(p.int("n"), 5);
        assert_eq!(p.str("fit"), "contain");
        assert!(p.bool("fast"));
        assert_eq!(p.str("note"), "");
    }

    #[test]
    fn rejections() {
        let reason = |raw: &[(&str, &str)]| parse(raw).unwrap_err().reason();
        assert_eq!(reason(&[]), Reason::ParamInvalid, "required param missing");
        assert_eq!(reason(&[("n", "1"), ("level", "0")]), Reason::ParamOutOfRange);
        assert_eq!(reason(&[("n", "1"), ("level", "23")]), Reason::ParamOutOfRange);
        assert_eq!(reason(&[("n", "1"), ("level", " 3")]), Reason::ParamInvalid);
        assert_eq!(reason(&[("n", "1"), ("level", "3.0")]), Reason::ParamInvalid);
        assert_eq!(reason(&[("n", "1"), ("fit", "Cover")]), Reason::ParamInvalid);
        assert_eq!(reason(&[("n", "1"), ("fast", "1")]), Reason::ParamInvalid);
        assert_eq!(reason(&[("n", "1"), ("note", "12345")]), Reason::ParamOutOfRange);
        assert_eq!(reason(&[("n", "1"), ("speed", "1")]), Reason::ParamInvalid);
        assert!(parse(&[("n", "1"), ("level", "1"), ("level", "22"), ("note", "1234")]).is_ok());
    }

    #[test]
    fn out_of_range_message_and_metadata() {
        let e = parse(&[("n", "1"), ("level", "40")]).unwrap_err().in_step(2, "compress.zstd");
        assert_eq!(e.to_string(), "step 2 (compress.zstd): param \"level\" = 40 is out of range [1, 22]");
        let md = e.metadata();
        assert_eq!(md["step"], "2");
        assert_eq!(md["op"], "compress.zstd");
        assert_eq!(md["param"], "level");
        assert_eq!(md["limit"], "[1, 22]");
        assert_eq!(md["actual"], "40");
        assert_eq!(e.code() as i32, 3);
    }
}
