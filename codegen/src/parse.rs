//! Reads the `.proto` files with protox: where imports are found (the
//! built-in `workerbus/options.proto`, the user's include directories, the
//! Google well-known types), and errors that say where the problem is and,
//! for the mistakes the parser cannot explain, what to write instead.

use std::path::PathBuf;

use miette::Diagnostic;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use crate::schema::OPTIONS_FILE;

/// The source of `workerbus/options.proto`, served to every compilation.
const OPTIONS_PROTO: &str = include_str!("../proto/workerbus/options.proto");

/// How the options of an rpc are written, for errors about them.
const METHOD_FORM: &str = "an rpc's workerbus options are the fields of one option, `option (workerbus.method) = { timeout_ms: 5000, retries: 2, idempotent: true };` (its fields: name, timeout_ms, retries, idempotent, one_way)";

/// How the options of a service are written, for errors about them.
const SERVICE_FORM: &str = "a service's workerbus options are the fields of one option, `option (workerbus.service) = { name: \"search\" };` (its fields: name, events)";

/// The resolver chain of a compilation.
pub(crate) fn resolver(includes: &[PathBuf]) -> ChainFileResolver {
    let mut resolver = ChainFileResolver::new();
    resolver.add(OptionsResolver);
    for include in includes {
        resolver.add(IncludeFileResolver::new(include.clone()));
    }
    resolver.add(GoogleFileResolver::new());
    resolver
}

/// Serves the built-in `workerbus/options.proto`, so users need not copy it.
struct OptionsResolver;

impl FileResolver for OptionsResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == OPTIONS_FILE {
            File::from_source(name, OPTIONS_PROTO)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// A parse, import or option error as `file:line:column: service S: rpc
/// R: message`, with as much of the location as is known, and a hint when
/// the message alone would not say what to write.
pub(crate) fn describe_error(error: &protox::Error, includes: &[PathBuf]) -> String {
    let mut file = error.file().map(str::to_owned);
    let mut line = None;
    let labels = error.labels().into_iter().flatten();
    if let (Some(source), Some(label)) = (error.source_code(), labels.into_iter().next())
        && let Ok(span) = source.read_span(label.inner(), 0, 0)
    {
        if let Some(name) = span.name() {
            file = Some(name.to_owned());
        }
        line = Some((span.line(), span.column()));
    }
    let message = error.to_string();
    let mut described = match (&file, line) {
        (Some(file), Some((line, column))) => format!("{file}:{}:{}: ", line + 1, column + 1),
        (Some(file), None) => format!("{file}: "),
        _ => String::new(),
    };
    if let (Some(file), Some((line, _))) = (&file, line)
        && let Some(declaration) = enclosing_declaration(file, line, includes)
    {
        described.push_str(&declaration);
        described.push_str(": ");
    }
    described.push_str(&message);
    if let Some(hint) = hint(&message) {
        described.push_str("; ");
        described.push_str(hint);
    }
    described
}

/// What to write instead, for errors whose message does not say.
fn hint(message: &str) -> Option<&'static str> {
    if message.contains("found 'edition'") {
        return Some(
            "protobuf editions (`edition = \"2023\"`) are not supported: the parser and prost-build read proto2 and proto3 only; declare `syntax = \"proto3\";` or `syntax = \"proto2\";`",
        );
    }
    if !message.contains("workerbus.") {
        return None;
    }
    if message.contains("name 'workerbus.method' is not defined")
        || message.contains("name 'workerbus.service' is not defined")
    {
        return Some(
            "the workerbus options need `import \"workerbus/options.proto\";` (built in: it need not be on the include path)",
        );
    }
    // An option set on the other kind of declaration names the one it
    // should have used.
    if message.contains("extension to type 'google.protobuf.ServiceOptions'") {
        return Some(SERVICE_FORM);
    }
    if message.contains("extension to type 'google.protobuf.MethodOptions'") {
        return Some(METHOD_FORM);
    }
    // A field of one of the options written as an option of its own:
    // `(workerbus.timeout_ms)`.
    let undefined = message
        .split_once("'workerbus.")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(name, _)| name);
    match undefined {
        Some("method") => Some(METHOD_FORM),
        Some("service") => Some(SERVICE_FORM),
        Some("timeout_ms" | "retries" | "idempotent" | "one_way") => Some(METHOD_FORM),
        Some("events") => Some(SERVICE_FORM),
        _ if message.contains("(workerbus.method)") => Some(METHOD_FORM),
        _ if message.contains("(workerbus.service)") => Some(SERVICE_FORM),
        _ => Some(BOTH_FORMS),
    }
}

/// Both options, for a name that is neither.
const BOTH_FORMS: &str = "workerbus defines two options: an rpc's, `option (workerbus.method) = { timeout_ms: 5000, retries: 2, idempotent: true };` (its fields: name, timeout_ms, retries, idempotent, one_way), and a service's, `option (workerbus.service) = { name: \"search\" };` (its fields: name, events)";

/// The service, and the rpc, whose declaration holds `line` (0-based) of
/// `file`, read again through the include directories: `service pkg.S`, or
/// `service pkg.S: rpc R`.
fn enclosing_declaration(file: &str, line: usize, includes: &[PathBuf]) -> Option<String> {
    let file = resolver(includes).open_file(file).ok()?;
    let descriptor = file.file_descriptor_proto();
    let locations = &descriptor.source_code_info.as_ref()?.location;
    let covers = |path: &[i32]| {
        locations.iter().any(|location| {
            location.path == path && {
                let span = &location.span;
                let (start, end) = match span.len() {
                    3 => (span[0], span[0]),
                    4 => (span[0], span[2]),
                    _ => return false,
                };
                (start..=end).contains(&(line as i32))
            }
        })
    };
    let package = descriptor.package();
    let qualified = |name: &str| {
        if package.is_empty() {
            name.to_owned()
        } else {
            format!("{package}.{name}")
        }
    };
    for (i, service) in descriptor.service.iter().enumerate() {
        if !covers(&[6, i as i32]) {
            continue;
        }
        let service_name = format!("service {}", qualified(service.name()));
        for (j, method) in service.method.iter().enumerate() {
            if covers(&[6, i as i32, 2, j as i32]) {
                return Some(format!("{service_name}: rpc {}", method.name()));
            }
        }
        return Some(service_name);
    }
    None
}
