use serde_json::json;

use crate::support::*;

