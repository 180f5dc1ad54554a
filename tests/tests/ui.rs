//! Compile-time checks of the generated API: what compiles in a fresh crate,
//! and the errors users get when a handler is wrong.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}
