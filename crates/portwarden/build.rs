//! Records the target triple so the layering test can ask `cargo metadata` for this
//! platform only (and stay offline).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=TARGET_TRIPLE={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
