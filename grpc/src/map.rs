//! How workerbus's call semantics travel as gRPC's, both ways: status codes
//! (the same numbers), metadata, the timeout as `grpc-timeout`, the trace
//! context as a W3C `traceparent`. `docs/PROTOCOL.md`, chapter "gRPC",
//! is the normative description.

use std::time::Duration;

use bytes::Bytes;
use tonic::metadata::{
    AsciiMetadataValue, BinaryMetadataValue, KeyAndValueRef, MetadataKey, MetadataMap,
};
use workerbus::{Code, Error, Metadata, Status, TraceContext};

/// The header that carries a call's remaining time.
pub(crate) const GRPC_TIMEOUT: &str = "grpc-timeout";
/// The W3C trace context header.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The header that says how many attempts of a call came before this one.
pub(crate) const GRPC_PREVIOUS_ATTEMPTS: &str = "grpc-previous-rpc-attempts";

/// The headers above, and gRPC's status, as names made once: looking a
/// header up by a `&str` parses the name on every call.
pub(crate) mod names {
    use http::HeaderName;

    pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static(super::GRPC_TIMEOUT);
    pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static(super::TRACEPARENT);
    pub(crate) const GRPC_PREVIOUS_ATTEMPTS: HeaderName =
        HeaderName::from_static(super::GRPC_PREVIOUS_ATTEMPTS);
    pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    pub(crate) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    pub(crate) const GRPC_STATUS_DETAILS: HeaderName =
        HeaderName::from_static("grpc-status-details-bin");
}

/// Request headers that are gRPC's or HTTP's own, never a call's metadata.
fn is_transport_header(key: &str) -> bool {
    key.starts_with("grpc-")
        || matches!(
            key,
            "te" | "content-type" | "user-agent" | "content-length" | TRACEPARENT
        )
}

/// A workerbus status as tonic's: code, message and details one to one.
pub(crate) fn to_tonic(status: &Status) -> tonic::Status {
    // Every code workerbus has is gRPC's, with the same number.
    let code = tonic::Code::from_i32(status.code().as_u32() as i32);
    tonic::Status::with_details(code, status.message(), status.details().clone())
}

/// What a failed call answers over gRPC: a worker's status as it is, any
/// other failure as the status the core gives it (a timeout is
/// `DEADLINE_EXCEEDED`, a lost worker `UNAVAILABLE`...).
pub(crate) fn error_to_tonic(error: Error) -> tonic::Status {
    match error {
        Error::Remote { status, .. } => to_tonic(&status),
        error => to_tonic(&Status::from(error)),
    }
}

/// A call's metadata from gRPC request metadata, without the headers that
/// are gRPC's own (`grpc-*`, `te`, `content-type`, `user-agent`,
/// `traceparent`). An entry that breaks workerbus's rules (which are gRPC's)
/// is refused naming its key.
pub(crate) fn metadata_from(map: &MetadataMap) -> Result<Metadata, Error> {
    let mut metadata = Metadata::new();
    for entry in map.iter() {
        match entry {
            KeyAndValueRef::Ascii(key, value) => {
                if is_transport_header(key.as_str()) {
                    continue;
                }
                metadata.insert(key.as_str(), value.as_bytes())?;
            }
            KeyAndValueRef::Binary(key, value) => {
                let bytes = value.to_bytes().map_err(|_| Error::InvalidMetadata {
                    key: key.as_str().to_owned(),
                    reason: "the value is not base64",
                })?;
                metadata.insert(key.as_str(), bytes)?;
            }
        }
    }
    Ok(metadata)
}

/// Adds a call's response metadata from a gRPC response's headers or
/// trailers to `into`, without the transport's own headers (those of
/// requests, and `date`). An entry workerbus's rules refuse is `INTERNAL`,
/// entries past [`MAX_METADATA_LEN`](workerbus::MAX_METADATA_LEN) in all
/// `RESOURCE_EXHAUSTED`, naming the key.
pub(crate) fn response_metadata_from(map: &MetadataMap, into: &mut Metadata) -> Result<(), Status> {
    for entry in map.iter() {
        let (key, value) = match entry {
            KeyAndValueRef::Ascii(key, value) => {
                if is_transport_header(key.as_str()) || key.as_str() == "date" {
                    continue;
                }
                (key.as_str(), Bytes::copy_from_slice(value.as_bytes()))
            }
            KeyAndValueRef::Binary(key, value) => {
                let bytes = value.to_bytes().map_err(|_| {
                    Status::internal(format!(
                        "the server's response metadata {} is not base64",
                        key.as_str()
                    ))
                })?;
                (key.as_str(), bytes)
            }
        };
        into.insert(key, &value).map_err(|error| {
            Status::internal(format!("the server's response metadata: {error}"))
        })?;
        if into.encoded_len() > workerbus::MAX_METADATA_LEN {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "the server's response metadata passes the {} bytes a call takes at {key}",
                    workerbus::MAX_METADATA_LEN
                ),
            ));
        }
    }
    Ok(())
}

/// A server's status as workerbus's: code, message and details one to one,
/// its metadata (the trailers) added to the call's response metadata
/// `into`. A status without a failure code (`OK`, which no failure should
/// carry) is `UNKNOWN`; response metadata that breaks the rules replaces
/// the status (and is dropped).
pub(crate) fn from_tonic(status: &tonic::Status, into: &mut Metadata) -> Status {
    if let Err(refused) = response_metadata_from(status.metadata(), into) {
        *into = Metadata::new();
        return refused;
    }
    let code = match status.code() as i32 {
        0 => Code::Unknown,
        code => Code::from_u32(code.unsigned_abs()),
    };
    Status::new(code, status.message().to_owned())
        .with_details(Bytes::copy_from_slice(status.details()))
}

/// A message over a size limit, as tonic's codec reports it: `OUT_OF_RANGE`
/// (gRPC says `RESOURCE_EXHAUSTED`), saying "found {size} bytes, the limit
/// is: {limit} bytes". Its size and the limit, if `status` is one.
pub(crate) fn oversize(status: &tonic::Status) -> Option<(u64, u64)> {
    oversize_message(status.code(), status.message())
}

/// [`oversize`] from a status's code and message.
pub(crate) fn oversize_message(code: tonic::Code, message: &str) -> Option<(u64, u64)> {
    if code != tonic::Code::OutOfRange || !message.contains("message length too large") {
        return None;
    }
    let number_after = |marker: &str| -> Option<u64> {
        let rest = &message[message.find(marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    Some((number_after("found ")?, number_after("the limit is: ")?))
}

/// The status of a message over a size limit: `RESOURCE_EXHAUSTED`, naming
/// the message, both sizes, and whose limit it passed.
pub(crate) fn too_large(what: &str, size: u64, limit: u64, whose: &str) -> tonic::Status {
    tonic::Status::resource_exhausted(format!(
        "{what} is {size} bytes, over the {limit} bytes {whose} takes"
    ))
}

/// A W3C `traceparent` (version 00, sampled) for a trace context: the
/// calling span as the parent id.
pub(crate) fn encode_traceparent(trace: TraceContext) -> String {
    format!("00-{:032x}-{:016x}-01", trace.trace_id(), trace.span_id())
}

/// Adds `metadata` to gRPC metadata.
pub(crate) fn metadata_into(metadata: &Metadata, map: &mut MetadataMap) {
    for (key, value) in metadata.iter() {
        // Keys and values were checked under gRPC's rules when they were
        // inserted; one tonic refuses all the same is left out, not fatal.
        if key.ends_with("-bin") {
            if let Ok(key) = MetadataKey::from_bytes(key.as_bytes()) {
                map.append_bin(key, BinaryMetadataValue::from_bytes(value));
            }
        } else if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            AsciiMetadataValue::try_from(value),
        ) {
            map.append(key, value);
        }
    }
}

/// A `grpc-timeout` value: at most eight digits and a unit, the finest unit
/// that holds the duration (rounded up, so the callee never waits longer
/// than the caller). Written without a formatter: it is on every call's path.
pub(crate) fn encode_timeout(timeout: Duration) -> http::HeaderValue {
    const MAX: u64 = 99_999_999;
    // Past u64's nanoseconds (584 years), hours beyond eight digits too.
    let Ok(nanos) = u64::try_from(timeout.as_nanos()) else {
        return http::HeaderValue::from_static("99999999H");
    };
    let (value, unit) = [
        (1u64, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ]
    .into_iter()
    .map(|(per, unit)| (nanos.div_ceil(per), unit))
    .find(|(value, _)| *value <= MAX)
    .unwrap_or((MAX, b'H'));
    // Eight digits at most, then the unit.
    let mut text = [0u8; 9];
    let mut start = 8;
    let mut rest = value;
    loop {
        start -= 1;
        text[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let mut end = 8;
    text[end] = unit;
    end += 1;
    http::HeaderValue::from_bytes(&text[start..end]).expect("digits and a letter")
}

/// Reads a `grpc-timeout` value; `None` if it is malformed.
pub(crate) fn decode_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(value * 3600),
        'M' => Duration::from_secs(value * 60),
        'S' => Duration::from_secs(value),
        'm' => Duration::from_millis(value),
        'u' => Duration::from_micros(value),
        'n' => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Reads a W3C `traceparent`: `None` if it is malformed, of version `ff`,
/// or has an all-zero trace or parent id (which the specification makes
/// invalid).
pub(crate) fn decode_traceparent(value: &str) -> Option<TraceContext> {
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok()?;
    let span_id = u64::from_str_radix(span, 16).ok()?;
    if trace_id == 0 {
        return None;
    }
    TraceContext::from_parts(trace_id, span_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_trip_rounded_up_to_their_unit() {
        for (timeout, text) in [
            (Duration::from_millis(20), "20000000n"),
            (Duration::from_millis(250), "250000u"),
            (Duration::from_secs(30), "30000000u"),
            (Duration::from_secs(3000), "3000000m"),
            (Duration::from_secs(200_000), "200000S"),
            (Duration::from_nanos(1), "1n"),
        ] {
            assert_eq!(encode_timeout(timeout), text);
            assert_eq!(decode_timeout(text), Some(timeout));
        }
        let longest = Duration::from_secs(u64::MAX);
        assert_eq!(encode_timeout(longest), "99999999H");
        for timeout in [Duration::ZERO, Duration::from_nanos(99_999_999)] {
            let text = encode_timeout(timeout);
            assert_eq!(decode_timeout(text.to_str().unwrap()), Some(timeout));
        }
        // 100,000,001 µs does not fit in eight digits of µs: rounded up in ms.
        let odd = Duration::from_micros(100_000_001);
        assert_eq!(encode_timeout(odd), "100001m");
        assert!(decode_timeout(encode_timeout(odd).to_str().unwrap()).unwrap() >= odd);
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S", "12 m"] {
            assert_eq!(decode_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn traceparents_round_trip_and_invalid_ones_are_ignored() {
        let trace =
            TraceContext::from_parts(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0xf067).unwrap();
        let text = encode_traceparent(trace);
        assert_eq!(
            text,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-000000000000f067-01"
        );
        assert_eq!(decode_traceparent(&text), Some(trace));
        for bad in [
            "00-00000000000000000000000000000000-000000000000f067-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-000000000000f067-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-000000000000f067-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-000000000000f067-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-000000000000f067-01",
            "garbage",
        ] {
            assert_eq!(decode_traceparent(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert_eq!(
            decode_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-000000000000f067-01-xyz"),
            Some(trace)
        );
    }

    #[test]
    fn metadata_crosses_without_the_transports_headers() {
        let mut map = MetadataMap::new();
        map.insert("tenant", "blue".parse().unwrap());
        map.insert("grpc-timeout", "1S".parse().unwrap());
        map.insert("user-agent", "grpc-python".parse().unwrap());
        map.insert(TRACEPARENT, "00-...".parse().unwrap());
        map.insert_bin("blob-bin", BinaryMetadataValue::from_bytes(&[0, 255]));
        let metadata = metadata_from(&map).unwrap();
        let entries: Vec<(&str, &[u8])> = metadata.iter().collect();
        assert_eq!(
            entries,
            [("tenant", b"blue".as_slice()), ("blob-bin", &[0, 255])]
        );
        let mut back = MetadataMap::new();
        metadata_into(&metadata, &mut back);
        assert_eq!(back.get("tenant").unwrap(), "blue");
        assert_eq!(
            back.get_bin("blob-bin")
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            [0, 255]
        );
    }

    #[test]
    fn tonics_size_errors_are_read_for_both_sizes() {
        let status = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 2097157 bytes, the limit is: 1048576 bytes",
        );
        assert_eq!(oversize(&status), Some((2_097_157, 1_048_576)));
        let status = tonic::Status::out_of_range(
            "Error, encoded message length too large: found 5 bytes, the limit is: 4 bytes",
        );
        assert_eq!(oversize(&status), Some((5, 4)));
        assert_eq!(oversize(&tonic::Status::out_of_range("page 9 of 3")), None);
        assert_eq!(
            oversize(&tonic::Status::internal(
                "message length too large: found 5 bytes, the limit is: 4 bytes"
            )),
            None
        );
    }

    #[test]
    fn statuses_keep_code_message_and_details() {
        // A status is a failure: codes 1 to 16.
        for code in 1..=16 {
            let status = Status::new(Code::from_u32(code), "why").with_details(vec![1, 2, 3]);
            let tonic = to_tonic(&status);
            assert_eq!(tonic.code() as i32 as u32, code);
            assert_eq!(tonic.message(), "why");
            assert_eq!(tonic.details(), [1, 2, 3]);
        }
    }
}
