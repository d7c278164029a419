//! Leases as the rules see them.

use portwarden_core::alloc::LeaseFact;
use portwarden_store::Lease;

/// The store's leases as core's facts.
pub fn lease_facts(leases: &[Lease]) -> Vec<LeaseFact> {
    leases
        .iter()
        .map(|l| LeaseFact {
            id: l.id,
            port: l.port,
            protocol: l.protocol,
            service: l.service.clone(),
            pool: l.pool.clone(),
            owner: l.owner.clone(),
            process: l.process.clone(),
            expires_at: l.expires_at,
        })
        .collect()
}
