//! Compiles `proto/tandem/v1/*.proto` with protox (no system protoc), then
//! generates prost types and tonic stubs from the descriptor set. The
//! descriptor set of what tandem-compute serves (compute.proto and its
//! imports, not jobs.proto) is also written to OUT_DIR for tonic-reflection,
//! encoded by protox so custom options such as `(tandem.v1.reason)` survive.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../../../proto");
    let proto_dir = proto_root.join("tandem/v1");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let mut files: Vec<PathBuf> = fs::read_dir(&proto_dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::Compiler::new([&proto_root])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(&files)?
        .file_descriptor_set();

    // What tandem-compute serves: ComputeService and every message it
    // returns (errors.proto included), without JobService.
    let compute = protox::Compiler::new([&proto_root])?
        .include_imports(true)
        .include_source_info(true)
        .open_file("tandem/v1/compute.proto")?
        .encode_file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("compute_descriptor.bin"), compute)?;

    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
