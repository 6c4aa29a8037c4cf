//! `acme-compute`: `tandem-compute` plus Acme's own ops. Same flags and
//! environment variables as `tandem-compute` (see `--help`).
#![forbid(unsafe_code)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tandem_compute::run(tandem_compute::Flags::parse(), acme_compute::ops())
}
