//! The loops that make desired state true. The kube backend's desired state is its
//! `JacDeployment` resources: [`controller`] reconciles them (apply, config-hash rollouts, drift
//! healing, undeploy on deletion), only on the replica [`leader`] elects. The local backend's is
//! its state file, reconciled by the backend's own supervisor (`backend::local`).
//!
//! Both render desired states through a [`crate::plan::Planner`] (the service layer), so what a
//! loop applies is exactly what the API's Deploy would have applied.

pub mod controller;
pub mod leader;

pub use controller::{lead, run, ControllerConfig};
pub use leader::{elect, Election, LeaseConfig};
