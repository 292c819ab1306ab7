//! Python objects <-> `Value`. Plain data travels by value; numpy arrays travel as their raw
//! C-order bytes (one copy on each side, no per-element work). What is not plain is handed to a
//! caller-supplied `leaf` hook: the client sends proxies as references, the server stores the
//! object in its reference table.
//!
//! numpy is optional: it is imported only when a numpy value arrives (and an object can only be
//! a numpy one to encode if the process has imported numpy). Without it, numpy scalars decode to
//! the equal Python `bool`/`int`/`float`/`complex`/`bytes`/`str`, and an array (or a scalar only
//! numpy can hold, such as a datetime64) is a `NumpyRequiredError` naming the `numpy` extra.
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyImportError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PyModule, PySet, PyString,
    PyTuple, PyType,
};

use crate::errors::{numpy_required, qualified_name};
use crate::proto::{
    value::Kind, Complex, Dict, DictEntry, NdArray, NoneValue, NumpyScalar, RemoteRef as WireRef, Value, ValueList,
};

/// numpy dtype kinds that travel by value (bool, ints, floats, complex, datetimes, bytes, str).
const PLAIN_KINDS: &str = "biufcmMSU";

struct Numpy {
    ndarray: Py<PyType>,
    generic: Py<PyType>,
    ascontiguousarray: Py<PyAny>,
    frombuffer: Py<PyAny>,
}

static NUMPY: PyOnceLock<Numpy> = PyOnceLock::new();
/// Set once importing numpy failed: later numpy values fail (or decode without it) at once,
/// instead of searching `sys.path` again for every value.
static NUMPY_ABSENT: AtomicBool = AtomicBool::new(false);

/// Uses `module` as numpy (the import hook hands over the real numpy before `import numpy`
/// starts returning a remote proxy).
pub fn use_numpy(module: &Bound<'_, PyAny>) -> PyResult<()> {
    init_numpy(module).map(|_| ())
}

/// numpy, imported if needed; `Ok(None)` (with the reason) if this process cannot import it.
fn load_numpy(py: Python<'_>) -> PyResult<Result<&Numpy, PyErr>> {
    if let Some(np) = NUMPY.get(py) {
        return Ok(Ok(np));
    }
    let absent = || PyImportError::new_err("No module named 'numpy'");
    if NUMPY_ABSENT.load(Ordering::Relaxed) {
        return Ok(Err(absent()));
    }
    // A remote proxy standing in for numpy (the import hook without a local numpy) is not one.
    let modules = py.import("sys")?.getattr("modules")?;
    if let Ok(current) = modules.get_item("numpy") {
        if !current.is_instance_of::<PyModule>() {
            return Ok(Err(absent()));
        }
    }
    match py.import("numpy") {
        Ok(np) => init_numpy(np.as_any()).map(Ok),
        Err(err) if err.is_instance_of::<PyImportError>(py) => {
            NUMPY_ABSENT.store(true, Ordering::Relaxed);
            Ok(Err(err))
        }
        Err(err) => Err(err),
    }
}

fn init_numpy<'py>(np: &Bound<'py, PyAny>) -> PyResult<&'py Numpy> {
    NUMPY.get_or_try_init(np.py(), || {
        Ok(Numpy {
            ndarray: np.getattr("ndarray")?.cast_into::<PyType>()?.unbind(),
            generic: np.getattr("generic")?.cast_into::<PyType>()?.unbind(),
            ascontiguousarray: np.getattr("ascontiguousarray")?.unbind(),
            frombuffer: np.getattr("frombuffer")?.unbind(),
        })
    })
}

/// numpy, if the process has imported it (an object can only be a numpy one then).
fn loaded_numpy(py: Python<'_>) -> PyResult<Option<&Numpy>> {
    if let Some(np) = NUMPY.get(py) {
        return Ok(Some(np));
    }
    let modules = py.import("sys")?.getattr("modules")?;
    match modules.get_item("numpy") {
        // A remote proxy standing in for numpy is not numpy: nothing here can be a numpy object.
        Ok(np) if np.is_instance_of::<PyModule>() => init_numpy(&np).map(Some),
        _ => Ok(None),
    }
}

fn v(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

/// Encodes `obj`; `leaf` decides for objects that are not plain data (`Ok(None)`: give up, the
/// whole value is not plain).
pub fn encode<'py>(
    obj: &Bound<'py, PyAny>,
    leaf: &mut dyn FnMut(&Bound<'py, PyAny>) -> PyResult<Option<Value>>,
) -> PyResult<Option<Value>> {
    let py = obj.py();
    if obj.is_none() {
        return Ok(Some(v(Kind::None(NoneValue {}))));
    }
    if obj.is_exact_instance_of::<PyBool>() {
        return Ok(Some(v(Kind::BoolValue(obj.is_truthy()?))));
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return Ok(Some(match obj.extract::<i64>() {
            Ok(i) => v(Kind::IntValue(i)),
            Err(_) => v(Kind::BigInt(obj.str()?.to_string())),
        }));
    }
    if let Ok(f) = obj.cast_exact::<PyFloat>() {
        return Ok(Some(v(Kind::FloatValue(f.value()))));
    }
    if let Ok(s) = obj.cast_exact::<PyString>() {
        return Ok(Some(v(Kind::StrValue(s.to_cow()?.into_owned()))));
    }
    if let Ok(b) = obj.cast_exact::<PyBytes>() {
        return Ok(Some(v(Kind::BytesValue(Bytes::copy_from_slice(b.as_bytes())))));
    }
    if let Ok(c) = obj.cast_exact::<PyComplex>() {
        return Ok(Some(v(Kind::ComplexValue(Complex { real: c.real(), imag: c.imag() }))));
    }
    if let Ok(l) = obj.cast_exact::<PyList>() {
        return Ok(encode_items(l.iter(), leaf)?.map(|items| v(Kind::ListValue(items))));
    }
    if let Ok(t) = obj.cast_exact::<PyTuple>() {
        return Ok(encode_items(t.iter(), leaf)?.map(|items| v(Kind::TupleValue(items))));
    }
    if let Ok(d) = obj.cast_exact::<PyDict>() {
        let mut entries = Vec::with_capacity(d.len());
        for (key, value) in d.iter() {
            let (Some(key), Some(value)) = (encode(&key, leaf)?, encode(&value, leaf)?) else {
                return Ok(None);
            };
            entries.push(DictEntry { key: Some(key), value: Some(value) });
        }
        return Ok(Some(v(Kind::DictValue(Dict { entries }))));
    }
    if let Ok(s) = obj.cast_exact::<PySet>() {
        return Ok(encode_items(s.iter(), leaf)?.map(|items| v(Kind::SetValue(items))));
    }
    if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
        return Ok(encode_items(s.iter(), leaf)?.map(|items| v(Kind::FrozensetValue(items))));
    }
    if let Some(np) = loaded_numpy(py)? {
        if obj.get_type().is(np.ndarray.bind(py)) {
            if let Some(array) = encode_ndarray(np, obj)? {
                return Ok(Some(array));
            }
        } else if obj.is_instance(np.generic.bind(py))? {
            if let Some(dtype) = plain_dtype(&obj.getattr("dtype")?)? {
                let data = Bytes::copy_from_slice(obj.call_method0("tobytes")?.cast_into::<PyBytes>()?.as_bytes());
                return Ok(Some(v(Kind::NumpyScalar(NumpyScalar { dtype, data }))));
            }
        }
    }
    leaf(obj)
}

fn encode_items<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    leaf: &mut dyn FnMut(&Bound<'py, PyAny>) -> PyResult<Option<Value>>,
) -> PyResult<Option<ValueList>> {
    let mut out = Vec::with_capacity(items.size_hint().0);
    for item in items {
        match encode(&item, leaf)? {
            Some(value) => out.push(value),
            None => return Ok(None),
        }
    }
    Ok(Some(ValueList { items: out }))
}

/// The dtype string of a dtype that travels by value, little-endian.
fn plain_dtype(dtype: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    if dtype.getattr("hasobject")?.is_truthy()? || !dtype.getattr("fields")?.is_none() {
        return Ok(None);
    }
    let kind: String = dtype.getattr("kind")?.extract()?;
    if !PLAIN_KINDS.contains(kind.as_str()) {
        return Ok(None);
    }
    Ok(Some(dtype.getattr("str")?.extract()?))
}

fn encode_ndarray(np: &Numpy, obj: &Bound<'_, PyAny>) -> PyResult<Option<Value>> {
    let py = obj.py();
    let mut dtype_obj = obj.getattr("dtype")?;
    let Some(mut dtype) = plain_dtype(&dtype_obj)? else {
        return Ok(None);
    };
    let shape: Vec<u64> = obj.getattr("shape")?.extract()?;
    let mut array = np.ascontiguousarray.bind(py).call1((obj,))?;
    if dtype.starts_with('>') {
        dtype_obj = dtype_obj.call_method1("newbyteorder", ("<",))?;
        array = array.call_method1("astype", (&dtype_obj,))?;
        dtype = dtype_obj.getattr("str")?.extract()?;
    }
    let bytes = array.call_method1("reshape", (-1,))?.call_method1("view", ("u1",))?;
    let bytes = bytes.cast_into::<PyArray1<u8>>()?;
    if !bytes.is_contiguous() {
        return Err(pyo3::exceptions::PyValueError::new_err("array data is not contiguous"));
    }
    let data = Bytes::from_owner(ArrayData {
        ptr: bytes.data() as usize,
        len: bytes.len(),
        _array: bytes.into_any().unbind(),
    });
    Ok(Some(v(Kind::Ndarray(NdArray { dtype, shape, data }))))
}

/// The element bytes of a contiguous numpy array, kept alive by a reference to the array: the
/// message is encoded straight from the array's memory. (As with numpy's own GIL-free work,
/// another thread writing into the array while it is sent races with the send.)
struct ArrayData {
    ptr: usize,
    len: usize,
    _array: Py<PyAny>,
}

#[allow(unsafe_code)] // the one view of numpy's memory; see the SAFETY note
impl AsRef<[u8]> for ArrayData {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `_array` is a contiguous u8 array of `len` elements at `ptr`; the reference
        // keeps it (and its base) alive, and numpy never moves an array's data.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

/// Received element bytes as an owned buffer: the message buffer itself when nothing else shares
/// it (moving the bytes to its start, which keeps them aligned), else a copy.
fn owned(data: Bytes) -> Vec<u8> {
    match data.try_into_mut() {
        Ok(unique) => unique.into(),
        Err(shared) => shared.to_vec(),
    }
}

/// Why a `Value` could not become a Python object.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Python(#[from] PyErr),
    /// A reference id the receiver does not hold.
    #[error("unknown reference id {0:?}")]
    UnknownRef(String),
    #[error("malformed value: {0}")]
    Malformed(&'static str),
    /// `what` (an array, or a scalar only numpy can hold) arrived and numpy cannot be imported.
    #[error("{what} needs numpy, which cannot be imported")]
    NeedsNumpy {
        what: String,
        #[source]
        cause: PyErr,
    },
}

impl DecodeError {
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        match self {
            Self::Python(e) => e,
            Self::UnknownRef(_) => pyo3::exceptions::PyLookupError::new_err(self.to_string()),
            Self::Malformed(_) => pyo3::exceptions::PyValueError::new_err(self.to_string()),
            Self::NeedsNumpy { what, cause } => numpy_required(py, &what, cause),
        }
    }
}

/// A numpy scalar as the equal Python builtin value, for a process without numpy.
#[derive(Debug, Clone, PartialEq)]
pub enum PlainScalar {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Complex(f64, f64),
    Bytes(Vec<u8>),
    Str(String),
}

/// The value of the numpy scalar `data` of `dtype` (as the encoder sends it: little-endian or
/// order-free), or `None` for what only numpy can hold: datetimes and timedeltas (their unit is
/// numpy's), long doubles, and anything unexpected.
pub fn plain_scalar(dtype: &str, data: &[u8]) -> Option<PlainScalar> {
    let mut chars = dtype.chars();
    if !matches!(chars.next()?, '<' | '|') {
        return None;
    }
    let kind = chars.next()?;
    let count: usize = chars.as_str().parse().ok()?; // "M8[D]" stops here
                                                     // The count is the item size in bytes, but in characters (4 bytes each) for str.
    let size = if kind == 'U' { count.checked_mul(4)? } else { count };
    if data.len() != size {
        return None;
    }
    let mut word = [0u8; 8];
    if size <= 8 {
        word[..size].copy_from_slice(data);
    }
    let float = |bytes: &[u8]| -> f64 {
        match bytes.len() {
            2 => half_to_f64(u16::from_le_bytes([bytes[0], bytes[1]])),
            4 => f64::from(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
            _ => f64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])),
        }
    };
    Some(match (kind, size) {
        ('b', 1) => PlainScalar::Bool(data[0] != 0),
        ('i', 1 | 2 | 4 | 8) => {
            let shift = 64 - 8 * size;
            PlainScalar::Int((i64::from_le_bytes(word) << shift) >> shift)
        }
        ('u', 1 | 2 | 4 | 8) => PlainScalar::UInt(u64::from_le_bytes(word)),
        ('f', 2 | 4 | 8) => PlainScalar::Float(float(data)),
        ('c', 8 | 16) => PlainScalar::Complex(float(&data[..size / 2]), float(&data[size / 2..])),
        // numpy's bytes_ and str_ scalars drop the padding NULs of their dtype's width.
        ('S', _) => {
            let end = data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            PlainScalar::Bytes(data[..end].to_vec())
        }
        ('U', _) => {
            let chars: Option<String> =
                data.chunks_exact(4).map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
            PlainScalar::Str(chars?.trim_end_matches('\0').to_owned())
        }
        _ => return None,
    })
}

/// IEEE 754 binary16 (numpy's float16) widened exactly to f64.
fn half_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 == 0 { 1.0 } else { -1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    sign * match exponent {
        0 => fraction * 2f64.powi(-24),
        0x1f if fraction == 0.0 => f64::INFINITY,
        0x1f => f64::NAN,
        e => (1.0 + fraction / 1024.0) * 2f64.powi(e - 15),
    }
}

fn plain_to_py(py: Python<'_>, value: PlainScalar) -> Bound<'_, PyAny> {
    match value {
        PlainScalar::Bool(b) => PyBool::new(py, b).to_owned().into_any(),
        PlainScalar::Int(i) => PyInt::new(py, i).into_any(),
        PlainScalar::UInt(u) => PyInt::new(py, u).into_any(),
        PlainScalar::Float(f) => PyFloat::new(py, f).into_any(),
        PlainScalar::Complex(re, im) => PyComplex::from_doubles(py, re, im).into_any(),
        PlainScalar::Bytes(b) => PyBytes::new(py, &b).into_any(),
        PlainScalar::Str(s) => PyString::new(py, &s).into_any(),
    }
}

/// Decodes `value`; `refs` turns an `WireRef` into the object it stands for.
pub fn decode<'py>(
    py: Python<'py>,
    value: Value,
    refs: &mut dyn FnMut(WireRef) -> Result<Bound<'py, PyAny>, DecodeError>,
) -> Result<Bound<'py, PyAny>, DecodeError> {
    let Some(kind) = value.kind else {
        return Err(DecodeError::Malformed("value without a kind"));
    };
    Ok(match kind {
        Kind::None(_) => py.None().into_bound(py),
        Kind::BoolValue(b) => PyBool::new(py, b).to_owned().into_any(),
        Kind::IntValue(i) => PyInt::new(py, i).into_any(),
        Kind::BigInt(text) => py.get_type::<PyInt>().call1((text,))?,
        Kind::FloatValue(f) => PyFloat::new(py, f).into_any(),
        Kind::ComplexValue(c) => PyComplex::from_doubles(py, c.real, c.imag).into_any(),
        Kind::StrValue(s) => PyString::new(py, &s).into_any(),
        Kind::BytesValue(b) => PyBytes::new(py, &b).into_any(),
        Kind::ListValue(l) => PyList::new(py, decode_items(py, l, refs)?)?.into_any(),
        Kind::TupleValue(l) => PyTuple::new(py, decode_items(py, l, refs)?)?.into_any(),
        Kind::SetValue(l) => PySet::new(py, decode_items(py, l, refs)?)?.into_any(),
        Kind::FrozensetValue(l) => PyFrozenSet::new(py, decode_items(py, l, refs)?)?.into_any(),
        Kind::DictValue(d) => {
            let dict = PyDict::new(py);
            for entry in d.entries {
                let (Some(key), Some(value)) = (entry.key, entry.value) else {
                    return Err(DecodeError::Malformed("dict entry without key or value"));
                };
                dict.set_item(decode(py, key, refs)?, decode(py, value, refs)?)?;
            }
            dict.into_any()
        }
        Kind::Ndarray(a) => {
            if let Err(cause) = load_numpy(py)? {
                let what = format!("a numpy array (dtype '{}', shape {})", a.dtype, python_shape(&a.shape));
                return Err(DecodeError::NeedsNumpy { what, cause });
            }
            let flat = PyArray1::<u8>::from_vec(py, owned(a.data));
            let shape = PyTuple::new(py, a.shape)?;
            flat.call_method1("view", (a.dtype,))?.call_method1("reshape", (shape,))?
        }
        Kind::NumpyScalar(s) => {
            let np = match load_numpy(py)? {
                Ok(np) => np,
                Err(cause) => {
                    return match plain_scalar(&s.dtype, &s.data) {
                        Some(value) => Ok(plain_to_py(py, value)),
                        None => Err(DecodeError::NeedsNumpy {
                            what: format!("a numpy scalar of dtype {:?}", s.dtype),
                            cause,
                        }),
                    };
                }
            };
            let data = PyByteArray::new(py, &s.data);
            np.frombuffer.bind(py).call1((data, s.dtype))?.get_item(0)?
        }
        Kind::Ref(r) => refs(r)?,
    })
}

/// A shape as Python prints the tuple: `()`, `(3,)`, `(2, 3)`.
fn python_shape(shape: &[u64]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
    }
}

fn decode_items<'py>(
    py: Python<'py>,
    list: ValueList,
    refs: &mut dyn FnMut(WireRef) -> Result<Bound<'py, PyAny>, DecodeError>,
) -> Result<Vec<Bound<'py, PyAny>>, DecodeError> {
    list.items.into_iter().map(|item| decode(py, item, refs)).collect()
}

/// `module.QualName` of an object's type (`QualName` alone for builtins).
pub fn type_name(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    qualified_name(&obj.get_type())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_scalars_become_the_equal_builtin_values() {
        use PlainScalar as P;
        let cases: &[(&str, &[u8], P)] = &[
            ("|b1", &[1], P::Bool(true)),
            ("|i1", &[0xff], P::Int(-1)),
            ("<i2", &(-300i16).to_le_bytes(), P::Int(-300)),
            ("<i8", &i64::MIN.to_le_bytes(), P::Int(i64::MIN)),
            ("|u1", &[255], P::UInt(255)),
            ("<u8", &u64::MAX.to_le_bytes(), P::UInt(u64::MAX)),
            ("<f2", &0x3e00u16.to_le_bytes(), P::Float(1.5)),
            ("<f2", &0x0001u16.to_le_bytes(), P::Float(2f64.powi(-24))),
            ("<f2", &0xfc00u16.to_le_bytes(), P::Float(f64::NEG_INFINITY)),
            ("<f4", &0.1f32.to_le_bytes(), P::Float(f64::from(0.1f32))),
            ("<f8", &6.25f64.to_le_bytes(), P::Float(6.25)),
            ("<c8", &[1.0f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat(), P::Complex(1.0, -2.0)),
            ("<c16", &[0.5f64.to_le_bytes(), 3.0f64.to_le_bytes()].concat(), P::Complex(0.5, 3.0)),
            ("|S4", b"ab\0\0", P::Bytes(b"ab".to_vec())),
            ("|S0", b"", P::Bytes(Vec::new())),
            ("<U2", &[0xe9, 0, 0, 0, 0, 0, 0, 0], P::Str("\u{e9}".into())),
        ];
        for (dtype, data, expected) in cases {
            assert_eq!(plain_scalar(dtype, data).as_ref(), Some(expected), "{dtype}");
        }
        let nan = plain_scalar("<f2", &0x7e00u16.to_le_bytes());
        assert!(matches!(nan, Some(P::Float(f)) if f.is_nan()), "{nan:?}");
    }

    #[test]
    fn shapes_are_spelled_as_python_tuples() {
        assert_eq!(python_shape(&[]), "()");
        assert_eq!(python_shape(&[3]), "(3,)");
        assert_eq!(python_shape(&[2, 3]), "(2, 3)");
    }

    #[test]
    fn what_only_numpy_can_hold_is_not_made_plain() {
        for (dtype, data) in [
            ("<M8[D]", &[0u8; 8][..]),
            ("<m8[ns]", &[0; 8]),
            ("<f16", &[0; 16]),
            (">i4", &[0; 4]),
            ("<i4", &[0; 3]),
            ("<U1", &[0xff, 0xff, 0xff, 0xff]),
            ("|V4", &[0; 4]),
            ("", &[]),
        ] {
            assert_eq!(plain_scalar(dtype, data), None, "{dtype}");
        }
    }
}
