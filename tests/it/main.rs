//! Sandra's integration tests: the real app on loopback against a fake Graph API.

mod support;

mod actors;
mod conversation;
mod crash;
mod limits;
mod llm;
mod sender;
mod voice;
mod webhook;
