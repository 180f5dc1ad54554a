//! Generates the test services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    workerbus_build::compile_protos(&["proto/echo.proto"], &["proto"])?;
    Ok(())
}
