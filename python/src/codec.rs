//! Python objects <-> `Value`. Plain data travels by value; numpy arrays travel as their raw
//! C-order bytes (one copy on each side, no per-element work). What is not plain is handed to a
//! caller-supplied `leaf` hook: the client sends proxies as references, the server stores the
//! object in its reference table.
use bytes::Bytes;
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PyModule, PySet, PyString,
    PyTuple, PyType,
};

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

/// Uses `module` as numpy (the import hook hands over the real numpy before `import numpy`
/// starts returning a remote proxy).
pub fn use_numpy(module: &Bound<'_, PyAny>) -> PyResult<()> {
    init_numpy(module).map(|_| ())
}

fn load_numpy(py: Python<'_>) -> PyResult<&Numpy> {
    match NUMPY.get(py) {
        Some(np) => Ok(np),
        None => init_numpy(py.import("numpy")?.as_any()),
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
}

impl DecodeError {
    pub fn into_pyerr(self) -> PyErr {
        match self {
            Self::Python(e) => e,
            Self::UnknownRef(_) => pyo3::exceptions::PyLookupError::new_err(self.to_string()),
            Self::Malformed(_) => pyo3::exceptions::PyValueError::new_err(self.to_string()),
        }
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
            load_numpy(py)?;
            let flat = PyArray1::<u8>::from_vec(py, owned(a.data));
            let shape = PyTuple::new(py, a.shape)?;
            flat.call_method1("view", (a.dtype,))?.call_method1("reshape", (shape,))?
        }
        Kind::NumpyScalar(s) => {
            let np = load_numpy(py)?;
            let data = PyByteArray::new(py, &s.data);
            np.frombuffer.bind(py).call1((data, s.dtype))?.get_item(0)?
        }
        Kind::Ref(r) => refs(r)?,
    })
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

pub fn qualified_name(ty: &Bound<'_, PyType>) -> PyResult<String> {
    let module: String = ty.getattr("__module__")?.extract()?;
    let qualname: String = ty.getattr("__qualname__")?.extract()?;
    Ok(if module == "builtins" { qualname } else { format!("{module}.{qualname}") })
}
