//! Typed tool arguments: the Cedar type of `context.arguments`.
//!
//! `idguard policy schema` reads a server's `tools/list` result and writes
//! [`ARGUMENTS_SCHEMA_FILE`] next to the base schema: one common type `Arguments`, the union
//! of every tool's input properties as optional attributes, typed from their JSON Schemas.
//! With it, policies that read `context.arguments.amount` validate; at call time only the
//! declared fields are passed to Cedar, converted to their declared types.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use cedar_policy::{RestrictedExpression, SchemaFragment};
use serde_json::{Map, Value};

/// The file name of the generated arguments schema inside the policy directory.
pub const ARGUMENTS_SCHEMA_FILE: &str = "arguments.cedarschema";

/// The fragment used when no arguments schema was generated.
pub(crate) const EMPTY_ARGUMENTS: &str = "type Arguments = {};\n";

/// A Cedar type that tool arguments can have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ArgType {
    Long,
    String,
    Bool,
    Decimal,
    Set(Box<ArgType>),
    /// Attributes and whether each is required.
    Record(BTreeMap<String, (ArgType, bool)>),
}

impl ArgType {
    /// The `Arguments` common type declared by a schema fragment, if any.
    pub(crate) fn from_fragment(fragment: &SchemaFragment) -> Result<Option<Self>, String> {
        let json = fragment
            .clone()
            .to_json_value()
            .map_err(|e| e.to_string())?;
        let declared = json
            .as_object()
            .into_iter()
            .flat_map(|namespaces| namespaces.values())
            .find_map(|ns| ns.get("commonTypes")?.get("Arguments"));
        declared.map(Self::from_json).transpose()
    }

    fn from_json(v: &Value) -> Result<Self, String> {
        let ty = v.get("type").and_then(Value::as_str).unwrap_or_default();
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        match (ty, name.trim_start_matches("__cedar::")) {
            ("Long", _) | ("EntityOrCommon", "Long") => Ok(Self::Long),
            ("String", _) | ("EntityOrCommon", "String") => Ok(Self::String),
            ("Boolean", _) | ("EntityOrCommon", "Bool" | "Boolean") => Ok(Self::Bool),
            ("Extension", "decimal") | ("EntityOrCommon", "decimal") => Ok(Self::Decimal),
            ("Set", _) => {
                let element = v.get("element").ok_or("a Set without element type")?;
                Ok(Self::Set(Box::new(Self::from_json(element)?)))
            }
            ("Record", _) => {
                let mut attrs = BTreeMap::new();
                if let Some(map) = v.get("attributes").and_then(Value::as_object) {
                    for (k, a) in map {
                        let required = a.get("required").and_then(Value::as_bool).unwrap_or(true);
                        attrs.insert(k.clone(), (Self::from_json(a)?, required));
                    }
                }
                Ok(Self::Record(attrs))
            }
            _ => Err(format!(
                "arguments can be Long, String, Bool, decimal, Set or record; not `{}`",
                if name.is_empty() { ty } else { name }
            )),
        }
    }

    /// Converts an argument value. Fields of records that the type does not declare are
    /// dropped; a value of another type is an error.
    pub(crate) fn convert(&self, v: &Value, path: &str) -> Result<RestrictedExpression, String> {
        let mismatch = || format!("argument `{path}` must be {}", self.describe());
        match self {
            Self::Long => v
                .as_i64()
                .map(RestrictedExpression::new_long)
                .ok_or_else(mismatch),
            Self::String => v
                .as_str()
                .map(|s| RestrictedExpression::new_string(s.to_owned()))
                .ok_or_else(mismatch),
            Self::Bool => v
                .as_bool()
                .map(RestrictedExpression::new_bool)
                .ok_or_else(mismatch),
            Self::Decimal => {
                let n = v.as_f64().ok_or_else(mismatch)?;
                if !n.is_finite() || n.abs() >= 922_337_203_685_477.0 {
                    return Err(format!("argument `{path}` is out of decimal range"));
                }
                Ok(RestrictedExpression::new_decimal(format!("{n:.4}")))
            }
            Self::Set(element) => {
                let items = v.as_array().ok_or_else(mismatch)?;
                let converted: Result<Vec<_>, _> =
                    items.iter().map(|i| element.convert(i, path)).collect();
                Ok(RestrictedExpression::new_set(converted?))
            }
            Self::Record(_) => self.convert_map(v.as_object().ok_or_else(mismatch)?, path),
        }
    }

    /// Converts an object against a record type.
    pub(crate) fn convert_map(
        &self,
        map: &Map<String, Value>,
        path: &str,
    ) -> Result<RestrictedExpression, String> {
        let Self::Record(attrs) = self else {
            return Err(format!("argument `{path}` must be {}", self.describe()));
        };
        let mut fields = Vec::new();
        for (name, (ty, required)) in attrs {
            match map.get(name) {
                Some(Value::Null) | None if !*required => {}
                Some(value) => fields.push((name.clone(), ty.convert(value, name)?)),
                None => return Err(format!("argument `{path}.{name}` is missing")),
            }
        }
        RestrictedExpression::new_record(fields).map_err(|e| e.to_string())
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Long => "an integer",
            Self::String => "a string",
            Self::Bool => "a boolean",
            Self::Decimal => "a number",
            Self::Set(_) => "an array",
            Self::Record(_) => "an object",
        }
    }

    fn cedar(&self, out: &mut String, indent: usize) {
        match self {
            Self::Long => out.push_str("Long"),
            Self::String => out.push_str("String"),
            Self::Bool => out.push_str("Bool"),
            Self::Decimal => out.push_str("decimal"),
            Self::Set(e) => {
                out.push_str("Set<");
                e.cedar(out, indent);
                out.push('>');
            }
            Self::Record(attrs) if attrs.is_empty() => out.push_str("{}"),
            Self::Record(attrs) => {
                out.push_str("{\n");
                for (name, (ty, _)) in attrs {
                    let _ = write!(out, "{:indent$}  \"{}\"?: ", "", name.escape_default());
                    ty.cedar(out, indent + 2);
                    out.push_str(",\n");
                }
                let _ = write!(out, "{:indent$}}}", "");
            }
        }
    }

    /// From a JSON Schema (`type`, `items`, `properties`); `None` when not representable.
    fn from_json_schema(schema: &Value) -> Option<Self> {
        let ty = match schema.get("type") {
            Some(Value::String(t)) => t.as_str(),
            // ["string", "null"]: the non-null one, if exactly one.
            Some(Value::Array(ts)) => {
                let mut non_null = ts.iter().filter_map(Value::as_str).filter(|t| *t != "null");
                let first = non_null.next()?;
                if non_null.next().is_some() {
                    return None;
                }
                first
            }
            _ => return None,
        };
        match ty {
            "integer" => Some(Self::Long),
            "number" => Some(Self::Decimal),
            "string" => Some(Self::String),
            "boolean" => Some(Self::Bool),
            "array" => Some(Self::Set(Box::new(Self::from_json_schema(
                schema.get("items")?,
            )?))),
            "object" => {
                let mut attrs = BTreeMap::new();
                for (k, v) in schema.get("properties")?.as_object()? {
                    if let Some(t) = Self::from_json_schema(v) {
                        attrs.insert(k.clone(), (t, false));
                    }
                }
                Some(Self::Record(attrs))
            }
            _ => None,
        }
    }
}

/// Generates the arguments schema from a `tools/list` result (the JSON-RPC response, its
/// `result`, or a bare array of tools). Returns the schema text and notes about arguments
/// left out (types Cedar cannot represent).
///
/// # Errors
///
/// Every argument declared with conflicting types by different tools, and input that is
/// not a tool list.
pub fn generate_arguments_schema(tools_list: &Value) -> Result<(String, Vec<String>), Vec<String>> {
    let tools = tools_list
        .get("result")
        .unwrap_or(tools_list)
        .get("tools")
        .or(Some(tools_list))
        .and_then(Value::as_array)
        .ok_or_else(|| vec!["expected a tools/list result: `{\"tools\": [...]}`".to_owned()])?;
    let mut fields: BTreeMap<String, (ArgType, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for tool in tools {
        let name = tool.get("name").and_then(Value::as_str).unwrap_or("?");
        let Some(props) = tool
            .get("inputSchema")
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for (arg, schema) in props {
            let Some(ty) = ArgType::from_json_schema(schema) else {
                notes.push(format!(
                    "argument `{arg}` of `{name}` has a type Cedar cannot represent; left out"
                ));
                continue;
            };
            match fields.get(arg) {
                Some((existing, first)) if *existing != ty => problems.push(format!(
                    "argument `{arg}` is {} in `{first}` but {} in `{name}`: rename one of them",
                    existing.describe(),
                    ty.describe()
                )),
                Some(_) => {}
                None => {
                    fields.insert(arg.clone(), (ty, name.to_owned()));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let record = ArgType::Record(
        fields
            .into_iter()
            .map(|(k, (t, _))| (k, (t, false)))
            .collect(),
    );
    let mut out = String::from(
        "// Generated by `idguard policy schema` from the server's tools/list; regenerate it\n\
         // when the tools change. The type of `context.arguments` in the call phase: every\n\
         // tool's arguments, all optional (guard reads with `context.arguments has x`).\n\
         type Arguments = ",
    );
    record.cedar(&mut out, 0);
    out.push_str(";\n");
    Ok((out, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generates_union_of_arguments() {
        let list = json!({"tools": [
            {"name": "transfer_funds", "inputSchema": {"type": "object", "properties": {
                "amount": {"type": "integer"}, "to": {"type": "string"},
                "memo": {"type": ["string", "null"]}}}},
            {"name": "read_document", "inputSchema": {"type": "object", "properties": {
                "id": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
                "weird": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}}},
        ]});
        let (schema, notes) = generate_arguments_schema(&list).unwrap();
        assert!(schema.contains("\"amount\"?: Long,"), "{schema}");
        assert!(schema.contains("\"tags\"?: Set<String>,"), "{schema}");
        assert!(schema.contains("\"memo\"?: String,"), "{schema}");
        assert_eq!(notes.len(), 1);
        let (fragment, _) = SchemaFragment::from_cedarschema_str(&schema).unwrap();
        let ty = ArgType::from_fragment(&fragment).unwrap().unwrap();
        let ArgType::Record(attrs) = &ty else {
            panic!()
        };
        assert_eq!(attrs["amount"], (ArgType::Long, false));
        assert_eq!(attrs["tags"].0, ArgType::Set(Box::new(ArgType::String)));
    }

    #[test]
    fn conflicting_types_are_reported() {
        let list = json!([
            {"name": "a", "inputSchema": {"properties": {"x": {"type": "integer"}}}},
            {"name": "b", "inputSchema": {"properties": {"x": {"type": "string"}}}},
        ]);
        let err = generate_arguments_schema(&list).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0].contains("`x` is an integer in `a` but a string in `b`"),
            "{err:?}"
        );
    }

    #[test]
    fn conversion_drops_unknown_fields_and_checks_types() {
        let ty = ArgType::Record(BTreeMap::from([
            ("amount".to_owned(), (ArgType::Long, false)),
            ("rate".to_owned(), (ArgType::Decimal, false)),
        ]));
        let ok = json!({"amount": 5, "rate": 0.25, "extra": "x"});
        assert!(ty.convert(&ok, "arguments").is_ok());
        let bad = json!({"amount": "lots"});
        let err = ty.convert(&bad, "arguments").unwrap_err();
        assert_eq!(err, "argument `amount` must be an integer");
    }
}
