//! Key budgets (`budget` on an API key): tokens and/or cost per period, enforced across all
//! workers exactly, the way the token limiter is: admission *reserves* the request's upper
//! bound (prompt bytes + max_tokens, and its cost at the model's price) and is refused when
//! spent + reserved + that bound would pass the budget; the response's real count replaces
//! the reservation when it ends. So concurrent requests never overshoot a budget by more
//! than what they spend beyond their own upper bound (nothing, when the provider honours
//! max_tokens).
//!
//! State lives in a [`BudgetCell`] per key, shared by every worker through the snapshot and
//! kept by the process-wide [`BudgetBook`] across snapshots (a key's spending survives
//! configuration changes). Across restarts it is rebuilt from the usage store: the admin
//! thread [`BudgetBook::seed`]s each key with what the usage export holds for its current
//! period (hour buckets, so exact for periods up to the hour buckets' 90-day retention).
//! What workers counted in the last second before a crash is lost, as in the usage export.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use uuid::Uuid;

use super::config::Budget;

/// What a key spent in one period, and what requests in flight have reserved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    /// Unix seconds: the start of the period these counts belong to.
    pub period_start: i64,
    pub tokens: u64,
    pub cost_nanos: u64,
    pub reserved_tokens: u64,
    pub reserved_cost_nanos: u64,
}

/// One key's spending, shared by every worker.
#[derive(Debug, Default)]
pub struct BudgetCell {
    spend: Mutex<Spend>,
}

/// A key's budget as a snapshot holds it: the settings, when its periods start, its cell.
#[derive(Debug)]
pub struct KeyBudget {
    pub key: Uuid,
    pub budget: Budget,
    /// The key's creation (Unix seconds): periods start at its hour.
    pub created: i64,
    pub cell: Arc<BudgetCell>,
}

/// A reservation to settle when the request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    period_start: i64,
    tokens: u64,
    cost_nanos: u64,
}

/// Why a key may not spend more now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// Unix seconds when the period ends and the budget resets.
    pub resets_at: i64,
    /// Whether the budget is already spent (else this request's bound does not fit).
    pub spent: bool,
}

impl KeyBudget {
    fn roll(&self, spend: &mut Spend, now: i64) -> i64 {
        let (start, end) = self.budget.period_at(self.created, now);
        if spend.period_start != start {
            // A new period: reservations in flight belong to the old one and settle there.
            *spend = Spend {
                period_start: start,
                ..Spend::default()
            };
        }
        end
    }

    /// Reserves `tokens` and `cost_nanos` (the request's upper bound).
    pub fn reserve(&self, tokens: u64, cost_nanos: u64, now: i64) -> Result<Hold, OverBudget> {
        let mut spend = self.cell.spend.lock();
        let end = self.roll(&mut spend, now);
        let over = |limit: Option<u64>, used: u64, reserved: u64, want: u64| {
            limit.map(|l| (used >= l, used + reserved + want > l))
        };
        for check in [
            over(
                self.budget.tokens,
                spend.tokens,
                spend.reserved_tokens,
                tokens,
            ),
            over(
                self.budget.cost_nanos(),
                spend.cost_nanos,
                spend.reserved_cost_nanos,
                cost_nanos,
            ),
        ]
        .into_iter()
        .flatten()
        {
            let (spent, would_pass) = check;
            if would_pass {
                return Err(OverBudget {
                    resets_at: end,
                    spent,
                });
            }
        }
        spend.reserved_tokens += tokens;
        spend.reserved_cost_nanos += cost_nanos;
        Ok(Hold {
            period_start: spend.period_start,
            tokens,
            cost_nanos,
        })
    }

    /// Replaces `hold` by what the request really spent.
    pub fn settle(&self, hold: Hold, tokens: u64, cost_nanos: u64, now: i64) {
        let mut spend = self.cell.spend.lock();
        self.roll(&mut spend, now);
        if spend.period_start == hold.period_start {
            spend.reserved_tokens = spend.reserved_tokens.saturating_sub(hold.tokens);
            spend.reserved_cost_nanos = spend.reserved_cost_nanos.saturating_sub(hold.cost_nanos);
        }
        // Spent now counts in the period it ended in (a request straddling a reset counts
        // in the new one: the conservative side).
        spend.tokens += tokens;
        spend.cost_nanos += cost_nanos;
    }

    /// The current period's spending and when it ends.
    pub fn status(&self, now: i64) -> (Spend, i64) {
        let mut spend = self.cell.spend.lock();
        let end = self.roll(&mut spend, now);
        (*spend, end)
    }
}

/// The process's budget cells by key, held weakly: a cell lives while a snapshot holds it.
#[derive(Debug, Default)]
pub struct BudgetBook {
    cells: Mutex<HashMap<Uuid, Weak<BudgetCell>>>,
    /// Spending read back from the usage store at start: (period start, tokens, cost).
    seeds: Mutex<HashMap<Uuid, (i64, u64, u64)>>,
}

impl BudgetBook {
    /// The cell of `key` (the same one while any snapshot holds it).
    pub fn cell(&self, key: Uuid) -> Arc<BudgetCell> {
        let mut cells = self.cells.lock();
        if let Some(cell) = cells.get(&key).and_then(Weak::upgrade) {
            return cell;
        }
        if cells.len() > 64 && cells.len().is_power_of_two() {
            cells.retain(|_, w| w.strong_count() > 0);
        }
        let cell = Arc::new(BudgetCell::default());
        if let Some(&(start, tokens, cost)) = self.seeds.lock().get(&key) {
            *cell.spend.lock() = Spend {
                period_start: start,
                tokens,
                cost_nanos: cost,
                ..Spend::default()
            };
        }
        cells.insert(key, Arc::downgrade(&cell));
        cell
    }

    /// Records what `key` spent in the period starting at `period_start` before this
    /// process started; a live cell of that period takes it too (it counted nothing yet,
    /// or only this process's own spending, which the store did not hold).
    pub fn seed(&self, key: Uuid, period_start: i64, tokens: u64, cost_nanos: u64) {
        self.seeds
            .lock()
            .insert(key, (period_start, tokens, cost_nanos));
        if let Some(cell) = self.cells.lock().get(&key).and_then(Weak::upgrade) {
            let mut spend = cell.spend.lock();
            if spend.period_start == period_start || spend.period_start == 0 {
                spend.period_start = period_start;
                spend.tokens += tokens;
                spend.cost_nanos += cost_nanos;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::Span;

    fn budget(tokens: u64) -> KeyBudget {
        KeyBudget {
            key: Uuid::from_u128(1),
            budget: Budget {
                tokens: Some(tokens),
                cost: None,
                period: Span::parse("1d").expect("span"),
            },
            created: 0,
            cell: Arc::default(),
        }
    }

    #[test]
    fn reservations_count_until_settled_and_settling_keeps_the_real_spend() {
        let b = budget(1000);
        let a = b.reserve(600, 0, 10).expect("fits");
        assert!(b.reserve(600, 0, 10).is_err(), "600 + 600 reserved > 1000");
        b.settle(a, 100, 0, 11);
        let c = b.reserve(600, 0, 12).expect("100 spent + 600 fits");
        b.settle(c, 900, 0, 13);
        let over = b.reserve(1, 0, 14).expect_err("1000 spent");
        assert!(over.spent);
        assert_eq!(over.resets_at, 86_400);
        assert!(b.reserve(1, 0, 86_400).is_ok(), "a new period starts empty");
    }

    #[test]
    fn the_book_keeps_one_cell_per_key_and_seeds_it() {
        let book = BudgetBook::default();
        book.seed(Uuid::from_u128(1), 0, 700, 0);
        let cell = book.cell(Uuid::from_u128(1));
        let b = KeyBudget {
            cell,
            ..budget(1000)
        };
        assert!(b.reserve(400, 0, 5).is_err(), "700 seeded + 400 > 1000");
        assert!(Arc::ptr_eq(&b.cell, &book.cell(Uuid::from_u128(1))));
    }
}
