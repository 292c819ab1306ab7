//! What a module server serves beyond its module's own attributes, decided on the request alone
//! (no Python): the protocol helpers of the reserved targets `@builtins`/`@operator`, and the
//! dunder attributes a path may name. Everything else is refused with PERMISSION_DENIED before
//! any Python runs.
//!
//! Without these rules `Call(target="@builtins", path=["__import__"], args=["os"])` hands out
//! `os`, and `f.__globals__["__builtins__"]` reaches `eval` from any function. The served module
//! itself stays callable in full: a deployment is a code-execution endpoint for its callers, and
//! these rules only take away the gadgets every server would otherwise add on top of the module.
//! The server's own `@splice` helpers return text only (names, docs, a signature's text), never
//! an object.
//! (`host.rs` adds the rules that need the objects: no module outside the served one, no frames.)
use crate::proto::{value, CallRequest, Value};
use crate::wire::{BUILTINS, OPERATOR, SPLICE};

/// `builtins` functions the proxies call (`jac_splice/proxy.py`): attribute writes, `dir`, the
/// conversions (`bool`, `bytes`, `complex`, `float`, `int`, `str`) and `format`, `repr`, `len`,
/// `hash`, iteration. Not `getattr` (proxies read attributes with `GetAttr`, whose path is
/// checked), nor anything that compiles, imports, opens or introspects (`__import__`, `eval`,
/// `exec`, `compile`, `open`, `globals`, `vars`, `type`, ...).
pub const BUILTIN_HELPERS: &[&str] = &[
    "bool", "bytes", "complex", "delattr", "dir", "float", "format", "hash", "int", "iter", "len", "next", "repr",
    "setattr", "str",
];

/// `operator` functions the proxies call: items, `in`, `index`, the arithmetic, bitwise and
/// comparison operators with their in-place forms, and the unary ones. Not `attrgetter`,
/// `methodcaller` or `call`, which would call anything by name.
pub const OPERATOR_HELPERS: &[&str] = &[
    "abs",
    "add",
    "and_",
    "contains",
    "delitem",
    "eq",
    "floordiv",
    "ge",
    "getitem",
    "gt",
    "iadd",
    "iand",
    "ifloordiv",
    "ilshift",
    "imatmul",
    "imod",
    "imul",
    "index",
    "invert",
    "ior",
    "ipow",
    "irshift",
    "isub",
    "itruediv",
    "ixor",
    "le",
    "lshift",
    "lt",
    "matmul",
    "mod",
    "mul",
    "ne",
    "neg",
    "or_",
    "pos",
    "pow",
    "rshift",
    "setitem",
    "sub",
    "truediv",
    "xor",
];

/// The server's own helpers (`host.rs`), on the `@splice` target: `describe(obj)` answers an
/// object's kind, `__doc__`, `__name__`, `__qualname__`, `__module__` and
/// `str(inspect.signature(obj))` as plain strings, so `help()` and `inspect.signature` work on
/// proxies without serving `inspect` itself (a `Signature` object would hand out the defaults and
/// annotations it holds, which `__defaults__` being refused keeps out of reach).
pub const SPLICE_HELPERS: &[&str] = &["describe"];

/// The dunder names a path may hold: plain data about an object (names, docs, versions,
/// `__all__` for `from m import *`) and the context-manager protocol proxies call. Never
/// `__class__`, `__dict__`, `__globals__`, `__code__`, `__subclasses__`, `__reduce__`, `__init__`, ...
pub const PROTOCOL_ATTRIBUTES: &[&str] =
    &["__all__", "__doc__", "__enter__", "__exit__", "__module__", "__name__", "__qualname__", "__version__"];

/// Why a request is not served; each names what was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{target}.{name} is not served: {target} offers only the proxy protocol helpers ({})", helpers(target))]
    Helper { target: &'static str, name: String },
    #[error("{target} is not served as an object: call one of its helpers ({})", helpers(target))]
    ReservedTarget { target: &'static str },
    #[error("attribute {name:?} is not served: of the dunder names only {} are", PROTOCOL_ATTRIBUTES.join(", "))]
    Dunder { name: String },
    #[error("{helper} needs the attribute name as a plain string")]
    HelperName { helper: &'static str },
    #[error("{name:?} is the module {module:?}, outside the served module {served:?}: not served")]
    ForeignModule { name: String, module: String, served: String },
    #[error("{name:?} is a {kind} object (interpreter internals): not served")]
    Internals { name: String, kind: String },
}

impl From<Refused> for tonic::Status {
    fn from(refused: Refused) -> Self {
        tonic::Status::permission_denied(refused.to_string())
    }
}

fn helpers(target: &str) -> String {
    reserved(target).map_or(&[][..], |(_, helpers)| helpers).join(", ")
}

fn reserved(target: &str) -> Option<(&'static str, &'static [&'static str])> {
    match target {
        BUILTINS => Some((BUILTINS, BUILTIN_HELPERS)),
        OPERATOR => Some((OPERATOR, OPERATOR_HELPERS)),
        SPLICE => Some((SPLICE, SPLICE_HELPERS)),
        _ => None,
    }
}

/// Whether `id` names a reserved target (never a reference: such targets cannot be passed as
/// arguments, or `builtins` itself could be handed to served code).
pub fn is_reserved(id: &str) -> bool {
    reserved(id).is_some()
}

/// `__x__` (Python's special names); `__x` and `_x` are ordinary (private) names.
fn is_dunder(name: &str) -> bool {
    name.len() > 4 && name.starts_with("__") && name.ends_with("__")
}

/// A path of attribute names walked from a module or an object.
pub fn check_path(path: &[String]) -> Result<(), Refused> {
    match path.iter().find(|name| is_dunder(name) && !PROTOCOL_ATTRIBUTES.contains(&name.as_str())) {
        Some(name) => Err(Refused::Dunder { name: name.clone() }),
        None => Ok(()),
    }
}

/// `GetAttr(target, path)`: reserved targets are not readable at all (a reference to one of
/// their functions would be callable without this check).
pub fn check_get_attr(target: &str, path: &[String]) -> Result<(), Refused> {
    if let Some((target, _)) = reserved(target) {
        return Err(Refused::ReservedTarget { target });
    }
    check_path(path)
}

/// `Call`: on a reserved target exactly one allowed helper; `setattr`/`delattr` also only on an
/// attribute name the path rules allow (no dunders).
pub fn check_call(request: &CallRequest) -> Result<(), Refused> {
    let Some((target, allowed)) = reserved(&request.target) else {
        return check_path(&request.path);
    };
    let [name] = request.path.as_slice() else {
        return Err(Refused::ReservedTarget { target });
    };
    let Some(&helper) = allowed.iter().find(|h| **h == name.as_str()) else {
        return Err(Refused::Helper { target, name: name.clone() });
    };
    if helper == "setattr" || helper == "delattr" {
        let attribute = match request.args.get(1) {
            Some(Value { kind: Some(value::Kind::StrValue(s)) }) => s,
            _ => return Err(Refused::HelperName { helper }),
        };
        check_path(std::slice::from_ref(attribute))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn call(target: &str, names: &[&str], args: Vec<Value>) -> CallRequest {
        CallRequest { target: target.into(), path: path(names), args, ..CallRequest::default() }
    }

    fn text(s: &str) -> Value {
        Value { kind: Some(value::Kind::StrValue(s.into())) }
    }

    #[test]
    fn the_proxy_helpers_are_served() {
        for helper in BUILTIN_HELPERS {
            let args = vec![Value::default(), text("value"), Value::default()];
            assert_eq!(check_call(&call(BUILTINS, &[helper], args)), Ok(()), "{helper}");
        }
        for helper in OPERATOR_HELPERS {
            assert_eq!(check_call(&call(OPERATOR, &[helper], vec![])), Ok(()), "{helper}");
        }
        assert_eq!(check_call(&call(SPLICE, &["describe"], vec![Value::default()])), Ok(()));
    }

    #[test]
    fn the_splice_target_serves_describe_alone_and_is_not_an_object() {
        for name in ["signature", "getsource", "getattr", "eval", "__import__", "describe_all"] {
            let refused = check_call(&call(SPLICE, &[name], vec![])).unwrap_err();
            assert_eq!(refused, Refused::Helper { target: SPLICE, name: name.into() });
            assert!(refused.to_string().contains("(describe)"), "{refused}");
        }
        assert_eq!(check_get_attr(SPLICE, &path(&["describe"])), Err(Refused::ReservedTarget { target: SPLICE }));
        assert!(check_call(&call(SPLICE, &[], vec![])).is_err());
        assert!(check_call(&call(SPLICE, &["describe", "__self__"], vec![])).is_err());
        assert!([BUILTINS, OPERATOR, SPLICE].into_iter().all(is_reserved));
        assert!(!is_reserved("") && !is_reserved("r1"));
    }

    #[test]
    fn code_running_builtins_are_refused_by_name() {
        for name in [
            "__import__",
            "eval",
            "exec",
            "compile",
            "open",
            "globals",
            "locals",
            "vars",
            "getattr",
            "breakpoint",
            "input",
            "memoryview",
            "type",
            "object",
            "help",
            "exit",
        ] {
            let refused = check_call(&call(BUILTINS, &[name], vec![text("os")])).unwrap_err();
            assert_eq!(refused, Refused::Helper { target: BUILTINS, name: name.into() });
            assert!(refused.to_string().contains(&format!("@builtins.{name} is not served")), "{refused}");
        }
        for name in ["attrgetter", "methodcaller", "call", "itemgetter"] {
            assert!(matches!(check_call(&call(OPERATOR, &[name], vec![])), Err(Refused::Helper { .. })), "{name}");
        }
    }

    #[test]
    fn reserved_targets_are_neither_readable_nor_walkable() {
        assert_eq!(check_get_attr(BUILTINS, &path(&["len"])), Err(Refused::ReservedTarget { target: BUILTINS }));
        assert_eq!(check_get_attr(OPERATOR, &[]), Err(Refused::ReservedTarget { target: OPERATOR }));
        // The module itself and `len.__self__`-style walks from a helper.
        assert!(check_call(&call(BUILTINS, &[], vec![])).is_err());
        assert!(check_call(&call(BUILTINS, &["len", "__self__"], vec![])).is_err());
        assert!(check_call(&call(BUILTINS, &["str", "maketrans"], vec![])).is_err());
    }

    #[test]
    fn dunder_paths_other_than_the_protocol_are_refused_on_modules_and_references() {
        for target in ["", "r-1"] {
            for bad in [
                &["__class__", "__subclasses__"][..],
                &["f", "__globals__"],
                &["f", "__code__"],
                &["Thing", "__init__", "__globals__"],
                &["x", "__reduce__"],
                &["__dict__"],
                &["__builtins__"],
            ] {
                let refused = check_get_attr(target, &path(bad)).unwrap_err();
                assert!(matches!(&refused, Refused::Dunder { name } if bad.contains(&name.as_str())), "{refused}");
                assert!(check_call(&call(target, bad, vec![])).is_err(), "{bad:?}");
            }
        }
    }

    #[test]
    fn ordinary_private_and_protocol_names_pass() {
        let ok = path(&["_private", "__mangled", "linalg", "__name__", "__version__", "__all__", "__doc__", "_"]);
        assert_eq!(check_get_attr("", &ok), Ok(()));
        assert_eq!(check_call(&call("r-1", &["__enter__"], vec![])), Ok(()));
        assert_eq!(check_call(&call("r-1", &["__exit__"], vec![])), Ok(()));
        assert_eq!(check_path(&path(&["____"])), Ok(()), "too short to be a special name");
    }

    #[test]
    fn setattr_and_delattr_refuse_dunder_and_non_string_names() {
        let set = |name: Value| call(BUILTINS, &["setattr"], vec![Value::default(), name, Value::default()]);
        assert_eq!(check_call(&set(text("value"))), Ok(()));
        assert_eq!(check_call(&set(text("__class__"))), Err(Refused::Dunder { name: "__class__".into() }));
        assert_eq!(check_call(&set(Value::default())), Err(Refused::HelperName { helper: "setattr" }));
        let del = call(BUILTINS, &["delattr"], vec![Value::default(), text("__dict__")]);
        assert!(matches!(check_call(&del), Err(Refused::Dunder { .. })));
        assert_eq!(
            check_call(&call(BUILTINS, &["delattr"], vec![Value::default()])),
            Err(Refused::HelperName { helper: "delattr" })
        );
    }

    #[test]
    fn a_refusal_is_permission_denied_naming_the_name() {
        let status = tonic::Status::from(Refused::Dunder { name: "__globals__".into() });
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("\"__globals__\""), "{}", status.message());
    }
}
