//! Sandra's integration tests: the real app on loopback against a fake Graph API.

mod support;

mod accounts;
mod actors;
mod at_rest;
mod bad_input;
mod conversation;
mod crash;
mod doctor;
mod faults;
mod groups;
mod http_limits;
mod limits;
mod llm;
mod metrics;
mod photos;
mod playground;
mod portal;
mod portal_browser;
mod sender;
mod systemd;
mod voice;
mod voice_reply;
mod waiting;
mod webhook;
mod window;
