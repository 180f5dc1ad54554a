//! What a worker serves, as a peer reads it: the protocol version and each
//! service's methods, message types and fingerprints. The process driver's
//! handshake sends it (`PROTOCOL.md` 9.2), and a gateway answers it for the
//! workers behind it (`workerbus-grpc`'s describe call); a host checks it
//! against the schemas it was built with before its first call.

use bytes::Bytes;
use prost::Message;

use crate::control::PROTOCOL_VERSION;
use crate::schema::{MethodKind, MethodSchema, ServiceSchema};

/// The services a worker serves. Its fields are those of the handshake's
/// `Welcome` but the pid (tag 2), so either decodes as the other.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Description {
    #[prost(uint32, tag = "1")]
    pub(crate) protocol: u32,
    #[prost(message, repeated, tag = "3")]
    pub(crate) services: Vec<ServiceInfo>,
}

/// A service a worker serves, as a [`Description`] lists it.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ServiceInfo {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(fixed64, tag = "2")]
    pub(crate) fingerprint: u64,
    #[prost(message, repeated, tag = "3")]
    pub(crate) methods: Vec<MethodInfo>,
}

/// A method of a [`ServiceInfo`].
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MethodInfo {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, tag = "2")]
    pub(crate) request: String,
    #[prost(string, tag = "3")]
    pub(crate) response: String,
    #[prost(fixed64, tag = "4")]
    pub(crate) request_fingerprint: u64,
    #[prost(fixed64, tag = "5")]
    pub(crate) response_fingerprint: u64,
    /// 0 unary, 1 server streaming, 2 client streaming, 3 both.
    #[prost(uint32, tag = "6")]
    pub(crate) kind: u32,
}

impl From<&ServiceSchema> for ServiceInfo {
    fn from(schema: &ServiceSchema) -> ServiceInfo {
        ServiceInfo {
            name: schema.name().to_owned(),
            fingerprint: schema.fingerprint(),
            methods: schema.methods().iter().map(MethodInfo::from).collect(),
        }
    }
}

impl From<&MethodSchema> for MethodInfo {
    fn from(method: &MethodSchema) -> MethodInfo {
        MethodInfo {
            name: method.name().to_owned(),
            request: method.request().to_owned(),
            response: method.response().to_owned(),
            request_fingerprint: method.request_fingerprint(),
            response_fingerprint: method.response_fingerprint(),
            kind: method.kind().to_wire(),
        }
    }
}

/// Says how the service a worker serves differs from the one a host was
/// built with, or `None` if they are the same.
pub(crate) fn schema_difference(
    expected: &ServiceSchema,
    served: &[ServiceInfo],
) -> Option<String> {
    let Some(actual) = served.iter().find(|s| s.name == expected.name()) else {
        let names: Vec<&str> = served.iter().map(|s| s.name.as_str()).collect();
        return Some(format!(
            "the worker does not serve {} (it serves: {})",
            expected.name(),
            if names.is_empty() {
                "nothing".to_owned()
            } else {
                names.join(", ")
            }
        ));
    };
    if actual.fingerprint == expected.fingerprint() {
        return None;
    }
    let mut differences = Vec::new();
    for method in expected.methods() {
        match actual.methods.iter().find(|m| m.name == method.name()) {
            None => differences.push(format!("{} is missing from the worker", method.name())),
            Some(theirs) => {
                if theirs.kind != method.kind().to_wire() {
                    differences.push(format!(
                        "{}: {} here but {} in the worker",
                        method.name(),
                        MethodKind::describe_wire(method.kind().to_wire()),
                        MethodKind::describe_wire(theirs.kind),
                    ));
                }
                if theirs.request != method.request()
                    || theirs.request_fingerprint != method.request_fingerprint()
                {
                    differences.push(describe(
                        method.name(),
                        "request",
                        method.request(),
                        &theirs.request,
                    ));
                }
                if theirs.response != method.response()
                    || theirs.response_fingerprint != method.response_fingerprint()
                {
                    differences.push(describe(
                        method.name(),
                        "response",
                        method.response(),
                        &theirs.response,
                    ));
                }
            }
        }
    }
    for theirs in &actual.methods {
        if expected.method(&theirs.name).is_none() {
            differences.push(format!("{} exists only in the worker", theirs.name));
        }
    }
    if differences.is_empty() {
        differences.push("the method order differs".to_owned());
    }
    Some(format!(
        "{} differs: {}",
        expected.name(),
        differences.join("; ")
    ))
}

fn describe(method: &str, which: &str, ours: &str, theirs: &str) -> String {
    if ours == theirs {
        format!("{method}: the {which} type {ours} has a different structure")
    } else {
        format!("{method}: the {which} type is {ours} here but {theirs} in the worker")
    }
}

/// What a worker serving `schemas` answers a peer that asks what it serves:
/// the protocol version and each service's methods with their message
/// types and fingerprints, encoded (`PROTOCOL.md` 9.2's `Welcome`, without
/// its pid). For a gateway that answers for the workers behind it; a host
/// reads it with [`check_description`].
///
/// ```
/// use workerbus::{ServiceSchema, check_description, describe_services};
///
/// fn run(echo: &'static ServiceSchema, other: &'static ServiceSchema) {
/// let description = describe_services(&[echo]);
/// assert_eq!(check_description(&description, &[echo]), Ok(()));
/// assert!(check_description(&description, &[other]).is_err());
/// # }
/// ```
pub fn describe_services(schemas: &[&ServiceSchema]) -> Bytes {
    Description {
        protocol: PROTOCOL_VERSION,
        services: schemas
            .iter()
            .map(|schema| ServiceInfo::from(*schema))
            .collect(),
    }
    .encode_to_vec()
    .into()
}

/// Checks a worker's description (as [`describe_services`] encodes it)
/// against the schemas a host was built with: its protocol version, and
/// each of `serves` unchanged. The error says what differs, naming the
/// service and methods, as [`Error::Handshake`](crate::Error::Handshake)
/// reports it.
pub fn check_description(description: &[u8], serves: &[&ServiceSchema]) -> Result<(), String> {
    let description = Description::decode(description)
        .map_err(|error| format!("the worker's description did not decode: {error}"))?;
    if description.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "the worker speaks protocol version {}, this host speaks version {PROTOCOL_VERSION}",
            description.protocol
        ));
    }
    for expected in serves {
        if let Some(difference) = schema_difference(expected, &description.services) {
            return Err(format!("schema mismatch: {difference}"));
        }
    }
    Ok(())
}
