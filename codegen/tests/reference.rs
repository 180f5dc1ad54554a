//! The "Generated code" reference, `docs/GENERATED.md`, checked against the
//! generator: the document shows its schema, `tests/reference/`, in full, and
//! its signature blocks list exactly the public items generated for it, with
//! their signatures; every item the emitter writes carries a doc comment.
//!
//! The generated side is read with `syn`: every public item, every public
//! item of an inherent `impl`, the methods of a public trait, the public
//! fields of a struct and the variants of an enum, and the header and
//! associated types of each trait `impl`. The
//! document's side is read from its code blocks marked ```` ```rust
//! signatures ````, in which each declaration ends with `;` (with `,` in a
//! struct or an enum), a line ending with `{` opens a scope that a line `}`
//! closes, and a declaration ending with `{ .. }` stands for its header.
//! Both sides are compared with their whitespace normalised and the paths
//! generated code spells in full shortened (see [`SHORT_PATHS`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use quote::{ToTokens, quote};

/// The reference schema, relative to `tests/`.
const SCHEMA: &str = "reference/reference.proto";

/// The generated file of the reference schema's package.
const PACKAGE_FILE: &str = "reference.rs";

/// The document, relative to this crate.
const DOCUMENT_PATH: &str = "../docs/GENERATED.md";

/// The document, as messages name it.
const DOCUMENT: &str = "docs/GENERATED.md";

/// The info string of the document's signature blocks.
const SIGNATURES: &str = "rust signatures";

/// Paths generated code spells in full, as the document writes them; the
/// document's section "Reading the signatures" says the same. Longer
/// prefixes first: the first match replaces.
const SHORT_PATHS: &[(&str, &str)] = &[
    ("::workerbus::__codegen::Stream", "Stream"),
    ("::workerbus::__codegen::", ""),
    ("::core::result::Result", "Result"),
    ("::core::option::Option", "Option"),
    ("::core::marker::Send", "Send"),
    ("::core::marker::Sync", "Sync"),
    ("::core::future::Future", "Future"),
    ("::core::clone::Clone", "Clone"),
    ("::core::fmt::Debug", "Debug"),
    ("::std::sync::Arc", "Arc"),
    ("::prost::alloc::string::String", "String"),
    ("::prost::alloc::vec::Vec", "Vec"),
    ("::prost::", "prost::"),
];

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn document() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DOCUMENT_PATH);
    fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
        .replace("\r\n", "\n")
}

/// The reference schema's package, as the generator writes it.
fn generated() -> syn::File {
    let out = tempfile::tempdir().expect("a temporary directory");
    workerbus_build::configure()
        .out_dir(out.path())
        .emit_rerun_if_changed(false)
        .compile_protos(&[tests_dir().join(SCHEMA)], &[tests_dir()])
        .unwrap_or_else(|error| panic!("the reference schema does not compile: {error}"));
    let path = out.path().join(PACKAGE_FILE);
    let code = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    syn::parse_file(&code).unwrap_or_else(|error| panic!("{PACKAGE_FILE} does not parse: {error}"))
}

fn walk_generated() -> Walk {
    let mut walk = Walk::default();
    walk.items(&generated().items, &[]);
    walk
}

#[test]
fn the_document_shows_the_reference_schema_in_full() {
    let path = tests_dir().join(SCHEMA);
    let schema = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
        .replace("\r\n", "\n");
    let document = document();
    let shown = code_blocks(&document, "proto")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{DOCUMENT} has no ```proto block"));
    assert!(
        shown.trim_end() == schema.trim_end(),
        "the first ```proto block of {DOCUMENT} must be codegen/tests/{SCHEMA}, in full; it is:\n{shown}"
    );
}

#[test]
fn the_document_lists_exactly_the_generated_items() {
    let generated_items = walk_generated().items;
    let document = document();
    let blocks = code_blocks(&document, SIGNATURES);
    assert!(
        !blocks.is_empty(),
        "{DOCUMENT} has no ```{SIGNATURES} block"
    );
    let mut documented_items = Vec::new();
    for block in &blocks {
        parse_block(block, &mut documented_items)
            .unwrap_or_else(|error| panic!("a ```{SIGNATURES} block of {DOCUMENT}: {error}"));
    }

    let listing = render(&generated_items);
    let generated_items = by_key(generated_items, "generated");
    let documented_items = by_key(documented_items, DOCUMENT);
    let mut problems = String::new();
    for (key, documented) in &documented_items {
        match generated_items.get(key) {
            None => writeln!(
                problems,
                "documented but not generated: {}",
                documented.describe()
            ),
            Some(generated) if generated.canonical != documented.canonical => writeln!(
                problems,
                "differs: {}\n    documented: {}\n    generated:  {}",
                documented.describe(),
                documented.readable,
                generated.readable
            ),
            Some(_) => Ok(()),
        }
        .expect("writing to a string");
    }
    for (key, generated) in &generated_items {
        if !documented_items.contains_key(key) {
            writeln!(
                problems,
                "generated but not documented: {}",
                generated.describe()
            )
            .expect("writing to a string");
        }
    }
    if !problems.is_empty() {
        panic!(
            "{DOCUMENT} and the code generated for codegen/tests/{SCHEMA} disagree:\n{problems}\n\
             every generated item, in a ```{SIGNATURES} block as the document may list it:\n\n{listing}"
        );
    }
}

#[test]
fn every_item_the_emitter_writes_is_documented() {
    let undocumented = walk_generated().undocumented;
    assert!(
        undocumented.is_empty(),
        "generated without a doc comment:\n    {}",
        undocumented.join("\n    ")
    );
}

/// One declaration: where it is (the headers of its enclosing scopes), its
/// text as written, and its canonical form, which comparisons use.
#[derive(Debug)]
struct Item {
    scope: Vec<String>,
    readable: String,
    canonical: String,
}

impl Item {
    fn new(scope: &[String], text: &str) -> Item {
        let canonical = normalise(text);
        Item {
            scope: scope.to_vec(),
            readable: pretty(&canonical),
            canonical,
        }
    }

    /// What identifies the item on both sides: its scope and its name (a
    /// trait `impl`'s whole header, which has no name).
    fn key(&self) -> (String, String) {
        let scope = self.scope.join(" > ");
        (scope, item_name(&self.readable))
    }

    fn describe(&self) -> String {
        let mut text = String::new();
        for header in &self.scope {
            text.push_str(&pretty(header));
            text.push_str(" { ");
        }
        text.push_str(&self.readable);
        for _ in &self.scope {
            text.push_str(" }");
        }
        text
    }
}

/// Items in order as a signature block: a scope's items in braces, a
/// struct with no public field and a trait `impl` as `{ .. }`.
fn render(items: &[Item]) -> String {
    let mut out = String::new();
    let mut open: Vec<&str> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        while open.len() > item.scope.len()
            || open
                .last()
                .is_some_and(|last| Some(*last) != item.scope.last().map(String::as_str))
        {
            open.pop();
            writeln!(out, "{}}}", "    ".repeat(open.len())).expect("writing to a string");
        }
        let indent = "    ".repeat(open.len());
        let opens = items
            .get(index + 1)
            .is_some_and(|next| next.scope.last() == Some(&item.canonical));
        let in_list = item
            .scope
            .last()
            .is_some_and(|header| header.contains("struct ") || header.contains("enum "));
        // An item's attributes go on lines of their own.
        let mut text = item.readable.as_str();
        while text.starts_with("#[")
            && let Some(end) = text.find("] ")
        {
            writeln!(out, "{indent}{}", &text[..=end]).expect("writing to a string");
            text = &text[end + 2..];
        }
        if opens {
            writeln!(out, "{indent}{text} {{").expect("writing to a string");
            open.push(&item.canonical);
        } else if item_name(text).starts_with("struct ") {
            writeln!(out, "{indent}{text} {{ /* private fields */ }}")
                .expect("writing to a string");
        } else if item_name(text).starts_with("impl") {
            writeln!(out, "{indent}{text} {{ /* ... */ }}").expect("writing to a string");
        } else if in_list {
            writeln!(out, "{indent}{text},").expect("writing to a string");
        } else {
            writeln!(out, "{indent}{text};").expect("writing to a string");
        }
    }
    while open.pop().is_some() {
        writeln!(out, "{}}}", "    ".repeat(open.len())).expect("writing to a string");
    }
    out
}

fn by_key(items: Vec<Item>, side: &str) -> BTreeMap<(String, String), Item> {
    let mut map = BTreeMap::new();
    for item in items {
        let key = item.key();
        if let Some(first) = map.insert(key, item) {
            panic!("{side}: listed twice: {}", first.describe());
        }
    }
    map
}

/// The name of a declaration: the identifier after its keyword, the field's
/// or the variant's, or an `impl`'s whole header.
fn item_name(readable: &str) -> String {
    let mut text = readable.trim();
    // Attributes (`#[derive(..)]`) come first.
    while text.starts_with("#[") {
        let end = text.find("] ").map_or(text.len(), |end| end + 2);
        text = text[end..].trim_start();
    }
    if text.starts_with("impl") {
        return normalise(text);
    }
    for modifier in ["pub ", "async "] {
        text = text.strip_prefix(modifier).unwrap_or(text);
    }
    for keyword in [
        "fn ", "const ", "struct ", "enum ", "trait ", "mod ", "type ",
    ] {
        if let Some(rest) = text.strip_prefix(keyword) {
            return format!("{keyword}{}", identifier(rest));
        }
    }
    identifier(text)
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '#')
        .collect()
}

/// What a walk over generated items finds: their declarations, and the
/// items the emitter writes that have no doc comment.
#[derive(Default)]
struct Walk {
    items: Vec<Item>,
    undocumented: Vec<String>,
}

impl Walk {
    /// Walks the items of a file or a module.
    fn items(&mut self, items: &[syn::Item], scope: &[String]) {
        for item in items {
            match item {
                syn::Item::Mod(module) if is_pub(&module.vis) => self.module(module, scope),
                syn::Item::Struct(item) if is_pub(&item.vis) => self.structure(item, scope),
                syn::Item::Enum(item) if is_pub(&item.vis) => self.enumeration(item, scope),
                syn::Item::Trait(item) if is_pub(&item.vis) => self.interface(item, scope),
                syn::Item::Const(item) if is_pub(&item.vis) => {
                    let text = constant(&item.ident, &item.ty, &item.expr);
                    self.declare(scope, &text, &item.attrs, true);
                }
                syn::Item::Impl(item) => self.implementation(item, scope),
                syn::Item::Fn(_)
                | syn::Item::Static(_)
                | syn::Item::Type(_)
                | syn::Item::Use(_)
                | syn::Item::Macro(_) => panic!(
                    "a kind of item this test does not read; teach it: {}",
                    tokens(item)
                ),
                _ => {}
            }
        }
    }

    /// Records a declaration, and whether it lacks the doc comment an item
    /// the emitter writes must have. Returns the scope it opens.
    fn declare(
        &mut self,
        scope: &[String],
        text: &str,
        attrs: &[syn::Attribute],
        emitted: bool,
    ) -> Vec<String> {
        let item = Item::new(scope, text);
        if emitted && !attrs.iter().any(|attr| attr.path().is_ident("doc")) {
            self.undocumented.push(item.describe());
        }
        let inner = nested(scope, &item.canonical);
        self.items.push(item);
        inner
    }

    fn module(&mut self, module: &syn::ItemMod, scope: &[String]) {
        let header = format!("pub mod {}", module.ident);
        let inner = self.declare(scope, &header, &module.attrs, !is_prost_module(module));
        if let Some((_, content)) = &module.content {
            self.items(content, &inner);
        }
    }

    fn structure(&mut self, item: &syn::ItemStruct, scope: &[String]) {
        let (name, generics) = (&item.ident, &item.generics);
        let header = format!(
            "{}{}",
            derives(&item.attrs),
            quote!(pub struct #name #generics)
        );
        let inner = self.declare(scope, &header, &item.attrs, !derives_prost(&item.attrs));
        for field in item.fields.iter().filter(|field| is_pub(&field.vis)) {
            let (name, ty) = (&field.ident, &field.ty);
            let text = quote!(pub #name: #ty).to_string();
            // A message's fields are prost-build's: their comments are the schema's.
            self.declare(&inner, &text, &field.attrs, false);
        }
    }

    fn enumeration(&mut self, item: &syn::ItemEnum, scope: &[String]) {
        let (name, generics) = (&item.ident, &item.generics);
        let header = format!(
            "{}{}",
            derives(&item.attrs),
            quote!(pub enum #name #generics)
        );
        let emitted = !derives_prost(&item.attrs);
        let inner = self.declare(scope, &header, &item.attrs, emitted);
        for variant in &item.variants {
            let (name, fields) = (&variant.ident, &variant.fields);
            let text = quote!(#name #fields).to_string();
            self.declare(&inner, &text, &variant.attrs, emitted);
        }
    }

    fn interface(&mut self, item: &syn::ItemTrait, scope: &[String]) {
        let (name, generics, bounds) = (&item.ident, &item.generics, &item.supertraits);
        let header = if bounds.is_empty() {
            quote!(pub trait #name #generics)
        } else {
            quote!(pub trait #name #generics: #bounds)
        };
        let inner = self.declare(scope, &header.to_string(), &item.attrs, true);
        for member in &item.items {
            let syn::TraitItem::Fn(method) = member else {
                panic!("a trait item other than a method: {}", tokens(member));
            };
            let text = method.sig.to_token_stream().to_string();
            self.declare(&inner, &text, &method.attrs, true);
        }
    }

    /// An `impl` block: an inherent one is a scope of its public items, a
    /// trait `impl` a header and its associated types (its methods are the
    /// trait's, and so are their docs).
    fn implementation(&mut self, item: &syn::ItemImpl, scope: &[String]) {
        let (params, self_ty) = (&item.generics.params, &item.self_ty);
        let generics = if params.is_empty() {
            quote!()
        } else {
            quote!(<#params>)
        };
        let header = match &item.trait_ {
            Some((_, path, _)) => quote!(impl #generics #path for #self_ty),
            None => quote!(impl #generics #self_ty),
        };
        let inner = self.declare(scope, &header.to_string(), &[], false);
        let inherent = item.trait_.is_none();
        for member in &item.items {
            match member {
                syn::ImplItem::Fn(method) if inherent && is_pub(&method.vis) => {
                    let text = format!("pub {}", method.sig.to_token_stream());
                    self.declare(&inner, &text, &method.attrs, true);
                }
                syn::ImplItem::Const(item) if inherent && is_pub(&item.vis) => {
                    let text = constant(&item.ident, &item.ty, &item.expr);
                    self.declare(&inner, &text, &item.attrs, true);
                }
                syn::ImplItem::Type(alias) if !inherent => {
                    let (name, ty) = (&alias.ident, &alias.ty);
                    let text = quote!(type #name = #ty).to_string();
                    self.declare(&inner, &text, &alias.attrs, false);
                }
                _ => {}
            }
        }
    }
}

/// A constant, with its value if that is a literal or a path (a message
/// name, or the schema a client's `SCHEMA` is).
fn constant(name: &syn::Ident, ty: &syn::Type, value: &syn::Expr) -> String {
    match value {
        syn::Expr::Lit(_) | syn::Expr::Path(_) => quote!(pub const #name: #ty = #value),
        _ => quote!(pub const #name: #ty),
    }
    .to_string()
}

fn is_pub(vis: &syn::Visibility) -> bool {
    matches!(vis, syn::Visibility::Public(_))
}

fn nested(scope: &[String], header: &str) -> Vec<String> {
    let mut scope = scope.to_vec();
    scope.push(header.to_owned());
    scope
}

fn tokens(item: &impl ToTokens) -> String {
    item.to_token_stream().to_string()
}

/// The `#[derive(..)]` attributes of an item, each followed by a space.
fn derives(attrs: &[syn::Attribute]) -> String {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("derive"))
        .map(|attr| format!("{} ", tokens(attr)))
        .collect()
}

/// Whether prost-build wrote the item: its comments come from the schema,
/// not from the emitter.
fn derives_prost(attrs: &[syn::Attribute]) -> bool {
    derives(attrs).contains("prost ::")
}

/// prost-build's module of a message's nested types (`echo_request`).
fn is_prost_module(module: &syn::ItemMod) -> bool {
    !module.ident.to_string().ends_with("_service")
}

/// The form both sides are compared in: [`canonical`], with the paths of
/// [`SHORT_PATHS`] shortened.
fn normalise(text: &str) -> String {
    canonical(&shorten(&canonical(text)))
}

/// Replaces the paths of [`SHORT_PATHS`] in a canonical text, keeping a word
/// apart from the word before it (`impl ::a::Stream` is `impl Stream`).
fn shorten(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    'text: while let Some(c) = rest.chars().next() {
        for (long, short) in SHORT_PATHS {
            if let Some(after) = rest.strip_prefix(long) {
                if out.chars().next_back().is_some_and(is_word) && short.starts_with(is_word) {
                    out.push(' ');
                }
                out.push_str(short);
                rest = after;
                continue 'text;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A canonical text spaced as Rust is usually written: after `,` and a
/// single `:`, around `->`, `=` and `+`, and between a closing `>`, `)` or
/// `]` and a word.
fn pretty(canonical: &str) -> String {
    let chars: Vec<char> = canonical.chars().collect();
    let mut out = String::new();
    let mut in_string = false;
    for (index, &c) in chars.iter().enumerate() {
        let previous = index.checked_sub(1).map(|i| chars[i]);
        let next = chars.get(index + 1).copied();
        if in_string {
            out.push(c);
            in_string = c != '"';
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            ',' => out.push_str(", "),
            ':' if previous != Some(':') && next != Some(':') => out.push_str(": "),
            '-' if next == Some('>') => out.push_str(" -"),
            '>' if previous == Some('-') => out.push_str("> "),
            '=' | '+' => {
                out.push(' ');
                out.push(c);
                out.push(' ');
            }
            '>' | ')' | ']' if next.is_some_and(|n| is_word(n) || n == '&' || n == '\'') => {
                out.push(c);
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The text without the whitespace Rust does not need: between two
/// characters of words (`pub fn`, `impl Future`) one space stays, every
/// other goes. String literals are kept as they are.
fn canonical(text: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut pending_space = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && out.chars().next_back().is_some_and(is_word) && is_word(c) {
            out.push(' ');
        }
        pending_space = false;
        if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    // Trailing commas (`(&self, request: A,)`) are a matter of layout too.
    let out = out.replace(",)", ")").replace(",>", ">");
    out.strip_suffix(',').map_or(out.clone(), str::to_owned)
}

/// The fenced code blocks of `markdown` whose info string is `info`.
fn code_blocks(markdown: &str, info: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let trimmed = line.trim();
        match &mut current {
            None => {
                if let Some(rest) = trimmed.strip_prefix("```")
                    && rest.trim() == info
                {
                    current = Some(String::new());
                }
            }
            Some(block) => {
                if trimmed == "```" {
                    blocks.push(current.take().expect("a block"));
                } else {
                    block.push_str(line);
                    block.push('\n');
                }
            }
        }
    }
    assert!(current.is_none(), "a ```{info} block is not closed");
    blocks
}

/// Reads the declarations of a signature block.
fn parse_block(block: &str, out: &mut Vec<Item>) -> Result<(), String> {
    // The open scopes' headers, and whether each lists fields or variants.
    let mut scope: Vec<String> = Vec::new();
    let mut lists: Vec<bool> = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let line = strip_comment(line).trim();
        if line.is_empty() {
            continue;
        }
        if line == "}" && pending.is_empty() {
            if scope.pop().is_none() {
                return Err("a `}` closes no scope".into());
            }
            lists.pop();
            continue;
        }
        if !pending.is_empty() {
            pending.push(' ');
        }
        pending.push_str(line);
        let in_list = lists.last().copied().unwrap_or(false);
        if let Some(header) = pending.strip_suffix('{') {
            let header = header.trim().to_owned();
            // A scope may open again in a later block (one `impl` over
            // several sections); its header is one item.
            let item = Item::new(&scope, &header);
            if !out
                .iter()
                .any(|seen| seen.scope == item.scope && seen.canonical == item.canonical)
            {
                out.push(item);
            }
            let name = item_name(&header);
            lists.push(name.starts_with("struct ") || name.starts_with("enum "));
            scope.push(normalise(&header));
            pending.clear();
        } else if pending.ends_with('}') {
            let Some(open) = pending.find('{') else {
                return Err(format!("`{pending}` closes a brace it did not open"));
            };
            out.push(Item::new(&scope, pending[..open].trim()));
            pending.clear();
        } else if let Some(declaration) = pending
            .strip_suffix(';')
            .or_else(|| pending.strip_suffix(',').filter(|_| in_list))
        {
            out.push(Item::new(&scope, declaration));
            pending.clear();
        }
    }
    if !pending.is_empty() {
        return Err(format!("`{pending}` does not end with `;`"));
    }
    if let Some(open) = scope.last() {
        return Err(format!("`{open} {{` is not closed"));
    }
    Ok(())
}

/// A line without its `//` comment (outside string literals).
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    for (index, &byte) in bytes.iter().enumerate() {
        match byte {
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(index + 1) == Some(&b'/') => return &line[..index],
            _ => {}
        }
    }
    line
}

#[test]
fn canonical_keeps_only_the_spaces_between_words() {
    assert_eq!(
        canonical("pub async fn echo (& self , request : EchoRequest) -> Result < A , B >"),
        "pub async fn echo(&self,request:EchoRequest)->Result<A,B>"
    );
    assert_eq!(
        canonical("fn f() -> impl Future<Output = ()> + Send + 'static"),
        "fn f()->impl Future<Output=()>+Send+'static"
    );
    assert_eq!(
        canonical("pub const A: &str = \"a b\""),
        "pub const A:&str=\"a b\""
    );
}

#[test]
fn a_block_reads_scopes_and_multi_line_declarations() {
    let block = "\
#[derive(Clone, Debug)]
pub struct EchoClient { /* private fields */ }
impl EchoClient {
    // A comment.
    pub fn new(channel: Channel) -> Self;
    pub async fn chat<S>(&self, requests: S) -> Result<(), Error>
    where
        S: Stream<Item = A> + Send + 'static;
}
pub enum EchoEvent {
    Echoed(EchoReply),
}
";
    let mut items = Vec::new();
    parse_block(block, &mut items).unwrap();
    let described: Vec<String> = items.iter().map(Item::describe).collect();
    assert_eq!(
        described,
        [
            "#[derive(Clone, Debug)] pub struct EchoClient",
            "impl EchoClient",
            "impl EchoClient { pub fn new(channel: Channel) -> Self }",
            "impl EchoClient { pub async fn chat<S>(&self, requests: S) -> Result<(), Error> where S: Stream<Item = A> + Send + 'static }",
            "pub enum EchoEvent",
            "pub enum EchoEvent { Echoed(EchoReply) }",
        ]
    );
    assert_eq!(items[0].key().1, "struct EchoClient");
    assert_eq!(items[3].key().1, "fn chat");
    assert!(parse_block("impl A {\n", &mut Vec::new()).is_err());
    assert!(parse_block("pub fn f()\n", &mut Vec::new()).is_err());
}
