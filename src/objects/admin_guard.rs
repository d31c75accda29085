//! The `AdminGuard` class: one per client address, a thin wrapper around the pure
//! [`FailureWindow`] that counts failed admin authentications.

use crate::core::lockout::{Failure, FailureWindow};
use std::cell::RefCell;
use worker::{durable_object, Date, DurableObject, Env, Request, Response, Result, State};

#[durable_object]
pub struct AdminGuard {
    window: RefCell<FailureWindow>,
}

impl DurableObject for AdminGuard {
    fn new(_state: State, _env: Env) -> Self {
        AdminGuard { window: RefCell::new(FailureWindow::default()) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let failure: Failure = serde_json::from_str(&req.text().await?)?;
        let verdict = self.window.borrow_mut().fail(Date::now().as_millis(), &failure);
        Response::from_json(&verdict)
    }
}
