//! Parameter specs and parsing. Params travel as strings (proto `map<string,
//! string>`); each op declares [`ParamSpec`]s and gets typed [`Params`].

use std::collections::BTreeMap;

use crate::error::{Error, Quoted, Result};

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

/// Mirror of `tandem.v1.ParamSpec`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub description: String,
    /// Used when absent; empty when `required`.
    pub default: String,
    pub required: bool,
    pub min: i64,
    pub max: i64,
    pub choices: Vec<&'static str>,
}

impl ParamSpec {
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
    Int(i64),
    Bool(bool),
    Str(String),
}

/// The parsed, validated parameters of one step: every declared param has a
/// value (given or default).
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

    /// The int param `name` (declared by the op, so present).
    pub fn int(&self, name: &str) -> i64 {
        match self.0.get(name) {
            Some(Value::Int(v)) => *v,
            other => panic!("op bug: int param {name:?} not declared ({other:?})"),
        }
    }

    pub fn bool(&self, name: &str) -> bool {
        match self.0.get(name) {
            Some(Value::Bool(v)) => *v,
            other => panic!("op bug: bool param {name:?} not declared ({other:?})"),
        }
    }

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
            ParamSpec { required: true, default: String::new(), ..ParamSpec::int("n", "", 0, 0, 9) },
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
