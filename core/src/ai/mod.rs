//! The AI gateway's pure parts: its configuration model ([`config`]: providers,
//! credentials, model policies, prices, key budgets), the event-stream codec ([`sse`]), the
//! facts the gateway reads from and writes into each ingress API's bodies ([`api`]),
//! translation between OpenAI Chat Completions and Anthropic Messages ([`translate`]), the
//! guardrails ([`guard`]: `prompt_guard`; [`pii`]: `pii_masking`, streams included) and key
//! budgets' shared spending ([`budget`]).
//!
//! Never does: I/O, routing or choosing status codes. Callers own the sockets, choose the
//! provider and the answers, and hand these modules bytes and `serde_json::Value`s.

pub mod api;
pub mod budget;
pub mod config;
pub mod event;
pub mod guard;
pub mod pii;
pub mod sse;
pub mod translate;
