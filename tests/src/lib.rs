//! Shared helpers for the integration and golden boot tests.
