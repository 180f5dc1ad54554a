//! The process driver's handshake, in one place: the host proves the
//! per-spawn [`Secret`] (`$workerbus.hello`), the worker answers with what it
//! serves (`Welcome`) and the host checks it against the schemas it was
//! built with; and `$workerbus.detach`, which moves a worker to a named
//! socket. Both sides' checks are here, shared with the fuzz targets.

use std::fmt;
use std::fs::File;
use std::io::Read;

use bytes::Bytes;
use prost::Message;

use crate::control::PROTOCOL_VERSION;
use crate::description::{ServiceInfo, schema_difference};
use crate::error::Status;
use crate::schema::ServiceSchema;

/// The handshake: the host proves the secret; the worker says what it serves.
pub(crate) const HELLO: &str = "$workerbus.hello";
/// Switch a process worker to a named socket, so it can outlive its host.
pub(crate) const DETACH: &str = "$workerbus.detach";

/// The host's half of the handshake.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Hello {
    /// The protocol version the host speaks.
    #[prost(uint32, tag = "1")]
    pub(crate) protocol: u32,
    /// The per-spawn secret.
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) secret: Bytes,
    /// Whether the host takes payloads in sealed memory files.
    #[prost(bool, tag = "3")]
    pub(crate) shared_memory: bool,
}

/// The worker's half of the handshake.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Welcome {
    #[prost(uint32, tag = "1")]
    pub(crate) protocol: u32,
    #[prost(uint32, tag = "2")]
    pub(crate) pid: u32,
    #[prost(message, repeated, tag = "3")]
    pub(crate) services: Vec<ServiceInfo>,
    /// Whether the worker takes payloads in sealed memory files.
    #[prost(bool, tag = "4")]
    pub(crate) shared_memory: bool,
}

/// The answer to [`DETACH`].
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Detached {
    /// The path of the socket the worker now listens on.
    #[prost(string, tag = "1")]
    pub(crate) address: String,
}

/// The worker's check of a host's [`Hello`]: the protocol version, then the
/// secret against the one `known` on this worker.
///
/// The first greeting on the inherited socket (`inherited`) sets the secret:
/// only the host that spawned the worker holds the other end of that socket.
/// Every other greeting must present the known secret. Shared by the real
/// handshake and the fuzz entry points, so both run this one check.
pub(crate) fn check_hello(
    hello: &Hello,
    known: &mut Option<Secret>,
    inherited: bool,
) -> Result<(), Status> {
    if hello.protocol != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "the host speaks protocol version {}, this worker speaks version {PROTOCOL_VERSION}",
            hello.protocol
        )));
    }
    let presented = Secret::from_bytes(&hello.secret)
        .ok_or_else(|| Status::permission_denied("the secret is not 32 bytes"))?;
    match known.as_ref() {
        Some(secret) if secret.matches(&hello.secret) => Ok(()),
        Some(_) => Err(Status::permission_denied("wrong secret")),
        None if inherited => {
            *known = Some(presented);
            Ok(())
        }
        None => Err(Status::permission_denied("wrong secret")),
    }
}

/// The host's reading of a worker's answer to [`HELLO`]: decodes the
/// [`Welcome`], checks its protocol version and that the worker serves each
/// schema in `serves` unchanged. The error is the reason the handshake
/// fails, as [`Error::Handshake`](crate::Error::Handshake) reports it.
pub(crate) fn read_welcome(answer: Bytes, serves: &[ServiceSchema]) -> Result<Welcome, String> {
    let welcome = Welcome::decode(answer)
        .map_err(|error| format!("the worker's answer to the handshake did not decode: {error}"))?;
    if welcome.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "the worker speaks protocol version {}, this host speaks version {PROTOCOL_VERSION}",
            welcome.protocol
        ));
    }
    for expected in serves {
        if let Some(difference) = schema_difference(expected, &welcome.services) {
            return Err(format!("schema mismatch: {difference}"));
        }
    }
    Ok(welcome)
}

/// A per-spawn secret: 32 random bytes a peer must present to be served.
///
/// It never appears in a process's arguments or environment, and its `Debug`
/// output is redacted. To let another process reconnect to a detached
/// worker, pass it [`to_hex`](Secret::to_hex) through a private channel.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl Secret {
    /// A fresh secret from the operating system's random source.
    pub fn generate() -> std::io::Result<Secret> {
        let mut bytes = [0; 32];
        File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Secret(bytes))
    }

    /// The secret as 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<Secret> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Secret(bytes))
    }

    pub(crate) fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.0)
    }

    /// Compares in time independent of where the inputs differ.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        presented.len() == self.0.len()
            && self
                .0
                .iter()
                .zip(presented)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Secret> {
        bytes.try_into().ok().map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::description::MethodInfo;
    use crate::schema::{MethodKind, MethodSchema};

    static METHODS: [MethodSchema; 2] = [
        MethodSchema::new(
            "echo.echo",
            ("echo.Req", 1),
            ("echo.Reply", 2),
            MethodKind::Unary,
            "/echo.Echo/Echo",
        ),
        MethodSchema::new(
            "echo.stats",
            ("google.protobuf.Empty", 3),
            ("echo.Stats", 4),
            MethodKind::ServerStreaming,
            "/echo.Echo/Stats",
        ),
    ];
    static SCHEMA: ServiceSchema = ServiceSchema::new("echo.Echo", &METHODS, 99);

    #[test]
    fn identical_schemas_do_not_differ() {
        assert_eq!(
            schema_difference(&SCHEMA, &[ServiceInfo::from(&SCHEMA)]),
            None
        );
    }

    #[test]
    fn differences_name_the_service_and_the_method() {
        let mut theirs = ServiceInfo::from(&SCHEMA);
        theirs.fingerprint = 100;
        theirs.methods[0].request_fingerprint = 7;
        theirs.methods[1].response = "echo.StatsV2".into();
        theirs.methods[1].kind = MethodKind::Unary.to_wire();
        theirs.methods.push(MethodInfo {
            name: "echo.extra".into(),
            ..MethodInfo::default()
        });
        assert_eq!(
            schema_difference(&SCHEMA, &[theirs]).unwrap(),
            "echo.Echo differs: echo.echo: the request type echo.Req has a different structure; \
             echo.stats: streams its responses here but is unary in the worker; \
             echo.stats: the response type is echo.Stats here but echo.StatsV2 in the worker; \
             echo.extra exists only in the worker"
        );
        assert_eq!(
            schema_difference(&SCHEMA, &[]).unwrap(),
            "the worker does not serve echo.Echo (it serves: nothing)"
        );
    }

    #[test]
    fn the_first_greeting_on_the_inherited_socket_sets_the_secret() {
        let hello = |secret: &[u8]| Hello {
            protocol: PROTOCOL_VERSION,
            secret: Bytes::copy_from_slice(secret),
            shared_memory: false,
        };
        let mut known = None;
        assert!(check_hello(&hello(&[1; 32]), &mut known, false).is_err());
        assert_eq!(known, None);
        check_hello(&hello(&[1; 32]), &mut known, true).unwrap();
        assert_eq!(known, Secret::from_bytes(&[1; 32]));
        check_hello(&hello(&[1; 32]), &mut known, false).unwrap();
        let refused = check_hello(&hello(&[2; 32]), &mut known, true).unwrap_err();
        assert_eq!(refused.message(), "wrong secret");
        let short = check_hello(&hello(&[1; 31]), &mut None, true).unwrap_err();
        assert_eq!(short.message(), "the secret is not 32 bytes");
        let old = Hello {
            protocol: PROTOCOL_VERSION + 1,
            ..hello(&[1; 32])
        };
        assert!(check_hello(&old, &mut None, true).is_err());
    }

    #[test]
    fn the_host_reads_a_welcome_and_checks_each_schema() {
        let welcome = |services: Vec<ServiceInfo>| {
            Bytes::from(
                Welcome {
                    protocol: PROTOCOL_VERSION,
                    pid: 7,
                    services,
                    shared_memory: true,
                }
                .encode_to_vec(),
            )
        };
        let read = read_welcome(welcome(vec![ServiceInfo::from(&SCHEMA)]), &[SCHEMA]).unwrap();
        assert_eq!(read.pid, 7);
        assert_eq!(
            read_welcome(welcome(vec![]), &[SCHEMA]).unwrap_err(),
            "schema mismatch: the worker does not serve echo.Echo (it serves: nothing)"
        );
        assert!(
            read_welcome(Bytes::from_static(&[0xff]), &[])
                .unwrap_err()
                .starts_with("the worker's answer to the handshake did not decode: ")
        );
    }

    #[test]
    fn secrets_round_trip_through_hex_and_compare_exactly() {
        let secret = Secret::generate().unwrap();
        assert_eq!(Secret::from_hex(&secret.to_hex()), Some(secret.clone()));
        assert!(secret.matches(&secret.to_bytes()));
        assert!(!secret.matches(&secret.to_bytes()[..31]));
        assert!(!secret.matches(&[0; 32]));
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert_ne!(Secret::generate().unwrap(), secret);
    }
}
