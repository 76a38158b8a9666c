//! The HTTP front end on the web listener: tus 1.0 and the IETF resumable-upload draft, on the
//! same upload service as `ferry/1` (`crate::uploads`).

use std::sync::Arc;

use crate::auth::Auth;
use crate::uploads::Uploads;

/// What the HTTP front end serves from.
pub(crate) struct Context {
    pub uploads: Arc<Uploads>,
    pub auth: Arc<Auth>,
}

impl Context {
    pub(crate) fn new(uploads: Arc<Uploads>, auth: Arc<Auth>, _config: &crate::Config) -> Self {
        Self { uploads, auth }
    }
}
