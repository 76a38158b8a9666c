//! End-to-end tests of Ferry over real QUIC on 127.0.0.1: one test binary, one scenario per
//! test. `process` runs the built binaries and kills them.

mod admin;
mod battery;
mod browser;
mod cluster;
mod cluster_shared;
mod crash;
mod first_contact;
mod growing;
mod growing_wire;
mod hardening;
mod hardening3;
mod hardening3_floods;
mod hooks;
mod ietf_draft;
mod job_options;
mod jobs;
mod operations;
mod packaging;
mod powercut;
mod process;
mod resilience;
mod restart;
mod scaleout;
mod storage;
mod tus;
mod tus_clients;
mod tus_resume;
mod upload;
mod web;
mod wire;
