//! The service's retry policy, as both upstream protocols apply it (`forward` for HTTP/1.1,
//! `h2upstream` for HTTP/2): which failures it retries, and the jittered wait before a
//! retry.

use std::time::Duration;

use shardgate_core::model::{RetryCondition, RetryPolicy};

use crate::exchange::UpstreamRequest;
use crate::refusal::UpstreamFailure;

/// Whether the policy retries `failure` (the method and body were checked already).
pub fn policy_retries(policy: &RetryPolicy, failure: UpstreamFailure) -> bool {
    match failure {
        UpstreamFailure::TimedOut => policy.retries_on(RetryCondition::Timeout),
        UpstreamFailure::ClosedWithoutAnswer | UpstreamFailure::FailedWhileAnswering => {
            policy.retries_on(RetryCondition::Reset)
        }
        UpstreamFailure::AnsweredWithError(status) => policy.retries_status(status),
        UpstreamFailure::ConnectFailed | UpstreamFailure::Tls(_) => {
            policy.retries_on(RetryCondition::ConnectFailure)
        }
        _ => false,
    }
}

/// Sleeps before retry number `attempts` (1 = the first retry): a random time up to
/// `min(backoff_max, backoff_base × 2^(attempts−1))`, never past the request's deadline.
pub async fn backoff(policy: &RetryPolicy, attempts: usize, req: &UpstreamRequest) {
    let base = policy.backoff_base.as_duration().as_micros() as u64;
    let cap = policy.backoff_max.as_duration().as_micros() as u64;
    let ceiling = base
        .saturating_mul(1u64 << (attempts.saturating_sub(1)).min(20))
        .min(cap);
    if ceiling == 0 {
        return;
    }
    let pause = Duration::from_micros(crate::observe::next_random() % (ceiling + 1));
    monoio::time::sleep(req.bounded(pause)).await;
}
