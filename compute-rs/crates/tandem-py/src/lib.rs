//! `tandem._native`: the Tandem transforms in-process, byte for byte the same
//! as the compute service (both run `tandem-core`). The GIL is released while
//! an op runs.
//!
//! ```python
//! from tandem import _native
//! digest = _native.run([{"op": "hash.sha256"}], b"hello")
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString};
use tandem_core::{Ctx, Error, Limits, Quoted, Registry, StepRequest, catch_panic};

create_exception!(
    tandem._native,
    TransformError,
    PyException,
    "A transform failed. Attributes: reason (ErrorReason name, e.g. \"UNKNOWN_OP\"), code (gRPC status \
     code number), message (the same text as the gRPC status message), metadata (dict[str, str])."
);

fn registry(debug_ops: bool) -> &'static Registry {
    static PLAIN: OnceLock<Registry> = OnceLock::new();
    static DEBUG: OnceLock<Registry> = OnceLock::new();
    let cell = if debug_ops { &DEBUG } else { &PLAIN };
    cell.get_or_init(|| Registry::new(Limits::default(), debug_ops))
}

fn transform_error(py: Python<'_>, e: &Error) -> PyErr {
    let message = e.to_string();
    let err = TransformError::new_err(message.clone());
    let value = err.value(py);
    let set = || -> PyResult<()> {
        value.setattr("reason", e.reason().as_str())?;
        value.setattr("code", e.code() as i32)?;
        value.setattr("message", message.as_str())?;
        value.setattr("metadata", e.metadata().into_pyobject(py)?)?;
        Ok(())
    };
    match set() {
        Ok(()) => err,
        Err(other) => other,
    }
}

fn param_value(v: &Bound<'_, PyAny>, key: &str) -> PyResult<String> {
    if let Ok(s) = v.downcast::<PyString>() {
        return Ok(s.to_str()?.to_owned());
    }
    if let Ok(b) = v.downcast::<PyBool>() {
        return Ok(if b.is_true() { "true" } else { "false" }.to_owned());
    }
    if v.is_instance_of::<PyInt>() {
        return Ok(v.str()?.to_str()?.to_owned());
    }
    Err(PyTypeError::new_err(format!(
        "param {} must be a str (or int/bool), not {}",
        Quoted::new(key).quoted(),
        Quoted::new(v.get_type().name()?.to_str()?)
    )))
}

fn parse_steps(steps: &Bound<'_, PyAny>) -> PyResult<Vec<StepRequest>> {
    let mut out = Vec::new();
    for (i, item) in steps.try_iter()?.enumerate() {
        let item = item?;
        let dict = item.downcast::<PyDict>().map_err(|_| {
            PyTypeError::new_err(format!("steps[{i}] must be a dict {{\"op\": str, \"params\": dict}}"))
        })?;
        let op = match dict.get_item("op")? {
            Some(op) => op
                .downcast::<PyString>()
                .map_err(|_| PyTypeError::new_err(format!("steps[{i}][\"op\"] must be a str")))?
                .to_str()?
                .to_owned(),
            None => return Err(PyTypeError::new_err(format!("steps[{i}] has no \"op\""))),
        };
        let mut params = BTreeMap::new();
        if let Some(p) = dict.get_item("params")?
            && !p.is_none()
        {
            let p = p
                .downcast::<PyDict>()
                .map_err(|_| PyTypeError::new_err(format!("steps[{i}][\"params\"] must be a dict")))?;
            for (k, v) in p.iter() {
                let k = k
                    .downcast::<PyString>()
                    .map_err(|_| PyTypeError::new_err(format!("steps[{i}] param names must be str")))?
                    .to_str()?
                    .to_owned();
                let v = param_value(&v, &k)?;
                params.insert(k, v);
            }
        }
        out.push(StepRequest { op, params });
    }
    Ok(out)
}

/// run(steps, data, *, attempt=0, debug_ops=False) -> bytes
///
/// Runs a pipeline over `data` and returns the last step's output. `steps` is
/// a list of `{"op": str, "params": {str: str}}` (params optional). Raises
/// TransformError.
#[pyfunction]
#[pyo3(signature = (steps, data, *, attempt = 0, debug_ops = false))]
fn run<'py>(
    py: Python<'py>,
    steps: &Bound<'py, PyAny>,
    data: PyBackedBytes,
    attempt: u32,
    debug_ops: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    let steps = parse_steps(steps)?;
    let reg = registry(debug_ops);
    let result = py.detach(|| {
        catch_panic(|| {
            let ctx = Ctx { attempt, ..Ctx::new(reg.limits()) };
            reg.run(&steps, &data, &ctx)
        })
    });
    match result {
        Ok(out) => Ok(PyBytes::new(py, &out.data)),
        Err(e) => Err(transform_error(py, &e)),
    }
}

/// list_ops(debug_ops=False) -> list[dict]
///
/// Every op with its params, like the gRPC ListOps.
#[pyfunction]
#[pyo3(signature = (debug_ops = false))]
fn list_ops<'py>(py: Python<'py>, debug_ops: bool) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for op in registry(debug_ops).ops() {
        let d = PyDict::new(py);
        d.set_item("name", op.name)?;
        d.set_item("description", op.description.as_str())?;
        let params = PyList::empty(py);
        for p in &op.params {
            let pd = PyDict::new(py);
            pd.set_item("name", p.name)?;
            pd.set_item("type", p.ty.as_str())?;
            pd.set_item("description", p.description.as_str())?;
            pd.set_item("default", p.default.as_str())?;
            pd.set_item("required", p.required)?;
            pd.set_item("min", p.min)?;
            pd.set_item("max", p.max)?;
            pd.set_item("choices", p.choices.clone())?;
            params.append(pd)?;
        }
        d.set_item("params", params)?;
        d.set_item("output_content_type", op.output_content_type)?;
        d.set_item("output_encoding", op.output_encoding)?;
        d.set_item("debug", op.debug)?;
        list.append(d)?;
    }
    Ok(list)
}

/// limits() -> dict
///
/// The limits the native module enforces (the compute service's defaults;
/// workers and queue_depth are 0: there is no pool in-process).
#[pyfunction]
fn limits<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let l = registry(false).limits();
    let d = PyDict::new(py);
    d.set_item("max_request_bytes", l.max_request_bytes)?;
    d.set_item("max_output_bytes", l.max_output_bytes)?;
    d.set_item("max_steps", l.max_steps)?;
    d.set_item("max_batch_items", l.max_batch_items)?;
    d.set_item("max_image_pixels", l.max_image_pixels)?;
    d.set_item("max_image_dimension", l.max_image_dimension)?;
    d.set_item("workers", l.workers)?;
    d.set_item("queue_depth", l.queue_depth)?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TransformError", m.py().get_type::<TransformError>())?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(list_ops, m)?)?;
    m.add_function(wrap_pyfunction!(limits, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
