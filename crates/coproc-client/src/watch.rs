//! The daemon's event stream: [`Client::watch`].

use crate::{Client, ClientError};
use coproc_proto::{Answer, Request};

impl Client {
    /// Receive the daemon's event stream on this session from now on:
    /// `vcoproc-state` (a vcoproc appeared, changed state or went),
    /// `fault`, `mapping-revoked`, `policy-changed`, `params-changed`, and
    /// `lagged` when this session fell behind — for this domain's
    /// vcoprocs and the pcoprocs its rule allows (admins: everything).
    /// Take them with [`Client::next_event`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use coproc_client::*;
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), ClientError> {
    /// let mut c = Client::connect()?;
    /// c.watch()?;
    /// loop {
    ///     match c.next_event(Duration::from_secs(1)) {
    ///         Ok(e) => println!("{e:?}"),
    ///         Err(ClientError::Timeout(_)) => continue,
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn watch(&mut self) -> Result<(), ClientError> {
        match self.call(Request::Watch, &[])? {
            Answer::Done => Ok(()),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}
