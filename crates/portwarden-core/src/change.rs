//! Change requests: a proposed policy version goes requested → approved → applying →
//! applied-pending-confirm → applied, or is rejected, expires, or is rolled back. The
//! rules live in one pure function, [`step`]: the store records what it returns, the
//! CLI and the daemon ask it before they act.

use serde::Serialize;

/// The first twelve hex digits of a policy version's hash: how tables and messages name
/// it (any unique prefix of six or more digits finds it).
pub fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Where a change request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeState {
    /// Proposed, waiting for approvals.
    Requested,
    /// Approved by as many other actors as the policy asks.
    Approved,
    /// Refused by a reviewer (final).
    Rejected,
    /// Being applied (pre-apply hook, firewall load).
    Applying,
    /// Loaded, with a deadline to confirm by, or it is rolled back.
    AppliedPendingConfirm,
    /// In force.
    Applied,
    /// Undone (by an operator, a missed deadline, a failed post-apply hook) (final).
    RolledBack,
    /// Overtaken: the live version changed since it was requested (final).
    Expired,
}

impl ChangeState {
    /// Every state, in the order of the life of a change.
    pub const ALL: [ChangeState; 8] = [
        ChangeState::Requested,
        ChangeState::Approved,
        ChangeState::Rejected,
        ChangeState::Applying,
        ChangeState::AppliedPendingConfirm,
        ChangeState::Applied,
        ChangeState::RolledBack,
        ChangeState::Expired,
    ];

    /// The name used in documents, the store and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Requested => "requested",
            ChangeState::Approved => "approved",
            ChangeState::Rejected => "rejected",
            ChangeState::Applying => "applying",
            ChangeState::AppliedPendingConfirm => "applied-pending-confirm",
            ChangeState::Applied => "applied",
            ChangeState::RolledBack => "rolled-back",
            ChangeState::Expired => "expired",
        }
    }

    /// Nothing more can happen to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ChangeState::Rejected | ChangeState::RolledBack | ChangeState::Expired
        )
    }
}

impl std::str::FromStr for ChangeState {
    type Err = String;
    fn from_str(s: &str) -> Result<ChangeState, String> {
        ChangeState::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown change state `{s}`"))
    }
}

impl std::fmt::Display for ChangeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change request as the state machine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Where it stands.
    pub state: ChangeState,
    /// Who asked for it.
    pub requester: String,
    /// Who approved it so far, in order.
    pub approvals: Vec<String>,
    /// Approvals it needs (`[change] approvals`).
    pub needed: u32,
    /// Whether it may be applied only once approved (`[change] require_approval`).
    pub require_approval: bool,
    /// The confirm deadline of an apply awaiting confirmation (Unix seconds).
    pub confirm_by: Option<i64>,
}

/// What happens to a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    /// `actor` approves it.
    Approve {
        /// Who.
        actor: String,
    },
    /// `actor` rejects it.
    Reject {
        /// Who.
        actor: String,
    },
    /// Applying starts.
    Apply,
    /// The firewall took it; with a deadline to confirm by, or in force at once.
    Loaded {
        /// The deadline (Unix seconds).
        confirm_by: Option<i64>,
    },
    /// Applying failed (a pre-apply hook, the firewall refused it): nothing changed.
    Failed,
    /// The operator confirms the apply.
    Confirm,
    /// The confirm deadline passed without a confirmation.
    Deadline,
    /// Undone: an operator's rollback, or a failed post-apply hook.
    RollBack,
    /// The live version changed since it was requested.
    Expire,
}

impl ChangeEvent {
    /// The event's name, as the ledger's action suffix (`change.approve` …).
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeEvent::Approve { .. } => "approve",
            ChangeEvent::Reject { .. } => "reject",
            ChangeEvent::Apply => "apply",
            ChangeEvent::Loaded { .. } => "loaded",
            ChangeEvent::Failed => "failed",
            ChangeEvent::Confirm => "confirm",
            ChangeEvent::Deadline => "deadline",
            ChangeEvent::RollBack => "rollback",
            ChangeEvent::Expire => "expire",
        }
    }
}

/// Why an event cannot happen to a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// Not in this state.
    #[error("a change that is {state} cannot be {what}")]
    Illegal {
        /// The state it is in.
        state: ChangeState,
        /// The event, as a past participle.
        what: &'static str,
    },
    /// The requester reviews their own change.
    #[error("{actor} requested this change: another actor must review it")]
    OwnChange {
        /// Who.
        actor: String,
    },
    /// An actor approves twice.
    #[error("{actor} has approved this change already")]
    Twice {
        /// Who.
        actor: String,
    },
    /// Applying needs approvals it does not have.
    #[error("the policy requires approval: this change has {have} of the {need} it needs")]
    NotApproved {
        /// Approvals it has.
        have: usize,
        /// Approvals it needs.
        need: u32,
    },
    /// Confirmed after its deadline (it is being rolled back).
    #[error("the confirm deadline passed {late} s ago: the change is rolled back")]
    Late {
        /// Seconds past it.
        late: i64,
    },
    /// The deadline is not reached yet.
    #[error("the confirm deadline is {early} s away")]
    Early {
        /// Seconds until it.
        early: i64,
    },
}

/// What an event did to a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: ChangeState,
    /// The change after (its state may be the same: an approval short of enough).
    pub change: Change,
}

fn past(e: &ChangeEvent) -> &'static str {
    match e {
        ChangeEvent::Approve { .. } => "approved",
        ChangeEvent::Reject { .. } => "rejected",
        ChangeEvent::Apply => "applied",
        ChangeEvent::Loaded { .. } => "marked loaded",
        ChangeEvent::Failed => "marked failed",
        ChangeEvent::Confirm => "confirmed",
        ChangeEvent::Deadline => "rolled back for its deadline",
        ChangeEvent::RollBack => "rolled back",
        ChangeEvent::Expire => "expired",
    }
}

/// The state an approval count puts a change in before it is applied.
fn reviewed(c: &Change) -> ChangeState {
    if c.approvals.len() >= c.needed as usize {
        ChangeState::Approved
    } else {
        ChangeState::Requested
    }
}

/// Applies `event` to `change` at `now`, or says why it cannot happen.
pub fn step(change: &Change, event: &ChangeEvent, now: i64) -> Result<Transition, ChangeError> {
    use ChangeEvent as E;
    use ChangeState as S;
    let illegal = || ChangeError::Illegal {
        state: change.state,
        what: past(event),
    };
    let mut next = change.clone();
    next.state = match (change.state, event) {
        (S::Requested | S::Approved, E::Approve { actor }) => {
            if *actor == change.requester {
                return Err(ChangeError::OwnChange {
                    actor: actor.clone(),
                });
            }
            if change.approvals.contains(actor) {
                return Err(ChangeError::Twice {
                    actor: actor.clone(),
                });
            }
            next.approvals.push(actor.clone());
            reviewed(&next)
        }
        (S::Requested | S::Approved, E::Reject { actor }) => {
            if *actor == change.requester {
                return Err(ChangeError::OwnChange {
                    actor: actor.clone(),
                });
            }
            S::Rejected
        }
        (S::Approved, E::Apply) => S::Applying,
        (S::Requested, E::Apply) => {
            if change.require_approval {
                return Err(ChangeError::NotApproved {
                    have: change.approvals.len(),
                    need: change.needed,
                });
            }
            S::Applying
        }
        (S::Applying, E::Loaded { confirm_by }) => {
            next.confirm_by = *confirm_by;
            if confirm_by.is_some() {
                S::AppliedPendingConfirm
            } else {
                S::Applied
            }
        }
        (S::Applying, E::Failed) => reviewed(change),
        (S::AppliedPendingConfirm, E::Confirm) => {
            let by = change.confirm_by.unwrap_or(i64::MAX);
            if now > by {
                return Err(ChangeError::Late { late: now - by });
            }
            next.confirm_by = None;
            S::Applied
        }
        (S::AppliedPendingConfirm, E::Deadline) => {
            let by = change.confirm_by.unwrap_or(i64::MAX);
            if now < by {
                return Err(ChangeError::Early { early: by - now });
            }
            S::RolledBack
        }
        (S::AppliedPendingConfirm | S::Applied, E::RollBack) => S::RolledBack,
        (S::Requested | S::Approved, E::Expire) => S::Expired,
        _ => return Err(illegal()),
    };
    if next.state != S::AppliedPendingConfirm {
        next.confirm_by = None;
    }
    Ok(Transition {
        from: change.state,
        change: next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChangeEvent as E;
    use ChangeState as S;

    fn change(state: ChangeState) -> Change {
        Change {
            state,
            requester: "alice".into(),
            approvals: Vec::new(),
            needed: 1,
            require_approval: true,
            confirm_by: (state == S::AppliedPendingConfirm).then_some(100),
        }
    }

    fn events() -> Vec<ChangeEvent> {
        vec![
            E::Approve {
                actor: "bob".into(),
            },
            E::Reject {
                actor: "bob".into(),
            },
            E::Apply,
            E::Loaded {
                confirm_by: Some(100),
            },
            E::Failed,
            E::Confirm,
            E::Deadline,
            E::RollBack,
            E::Expire,
        ]
    }

    /// Every (state, event) pair, at a time before the deadline (50) and after it (150):
    /// the state it leads to, or `None` where it is illegal.
    #[test]
    fn every_state_and_event_pair() {
        // Rows: states in ChangeState::ALL order; columns: events() order.
        let n = None;
        let table: [[Option<ChangeState>; 9]; 8] = [
            // approve, reject, apply, loaded, failed, confirm, deadline, rollback, expire
            [
                Some(S::Approved),
                Some(S::Rejected),
                n,
                n,
                n,
                n,
                n,
                n,
                Some(S::Expired),
            ], // requested (require_approval: apply refused)
            [
                Some(S::Approved),
                Some(S::Rejected),
                Some(S::Applying),
                n,
                n,
                n,
                n,
                n,
                Some(S::Expired),
            ], // approved
            [n; 9], // rejected
            [
                n,
                n,
                n,
                Some(S::AppliedPendingConfirm),
                Some(S::Requested),
                n,
                n,
                n,
                n,
            ], // applying (failed: back to where its approvals put it)
            [n, n, n, n, n, Some(S::Applied), n, Some(S::RolledBack), n], // applied-pending-confirm, before the deadline
            [n, n, n, n, n, n, n, Some(S::RolledBack), n],                // applied
            [n; 9],                                                       // rolled-back
            [n; 9],                                                       // expired
        ];
        for (i, s) in ChangeState::ALL.into_iter().enumerate() {
            for (j, e) in events().iter().enumerate() {
                let got = step(&change(s), e, 50).map(|t| t.change.state).ok();
                assert_eq!(got, table[i][j], "{s} + {}", e.as_str());
                if let Ok(t) = step(&change(s), e, 50) {
                    assert_eq!(t.from, s);
                }
            }
        }
        // After the deadline: a confirmation is too late, the deadline rolls it back.
        let p = change(S::AppliedPendingConfirm);
        assert_eq!(
            step(&p, &E::Confirm, 150),
            Err(ChangeError::Late { late: 50 })
        );
        assert_eq!(
            step(&p, &E::Deadline, 150).map(|t| t.change.state),
            Ok(S::RolledBack)
        );
        assert_eq!(
            step(&p, &E::Deadline, 50),
            Err(ChangeError::Early { early: 50 })
        );
        // Final states stay final.
        for s in ChangeState::ALL.into_iter().filter(|s| s.is_final()) {
            assert!(events().iter().all(|e| step(&change(s), e, 50).is_err()));
        }
    }

    #[test]
    fn reviews_need_other_actors_and_enough_of_them() {
        let mut c = change(S::Requested);
        c.needed = 2;
        assert_eq!(
            step(
                &c,
                &E::Approve {
                    actor: "alice".into()
                },
                1
            ),
            Err(ChangeError::OwnChange {
                actor: "alice".into()
            })
        );
        assert!(matches!(
            step(
                &c,
                &E::Reject {
                    actor: "alice".into()
                },
                1
            ),
            Err(ChangeError::OwnChange { .. })
        ));
        let one = step(
            &c,
            &E::Approve {
                actor: "bob".into(),
            },
            1,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .change;
        assert_eq!((one.state, one.approvals.len()), (S::Requested, 1));
        assert_eq!(
            step(
                &one,
                &E::Approve {
                    actor: "bob".into()
                },
                1
            ),
            Err(ChangeError::Twice {
                actor: "bob".into()
            })
        );
        assert_eq!(
            step(&one, &E::Apply, 1),
            Err(ChangeError::NotApproved { have: 1, need: 2 })
        );
        let two = step(
            &one,
            &E::Approve {
                actor: "carol".into(),
            },
            1,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .change;
        assert_eq!(two.state, S::Approved);
        // Without require_approval a single admin applies their own request.
        let mut solo = change(S::Requested);
        solo.require_approval = false;
        let t = step(&solo, &E::Apply, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.change.state, S::Applying);
        let done = step(&t.change, &E::Loaded { confirm_by: None }, 1)
            .unwrap_or_else(|e| panic!("{e}"))
            .change;
        assert_eq!((done.state, done.confirm_by), (S::Applied, None));
        assert_eq!(
            step(&t.change, &E::Failed, 1).map(|t| t.change.state),
            Ok(S::Requested)
        );
        for s in ChangeState::ALL {
            assert_eq!(s.as_str().parse::<ChangeState>(), Ok(s));
        }
    }
}
