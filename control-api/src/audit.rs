//! The audit trail's control-plane half: every change control-api makes is recorded in `audit_log` in the
//! same transaction as the change, and the monthly partitions are kept (created ahead, old ones dropped).
//! Authorization decisions are written by ext-authz; the SQL is in `db::audit`.

use std::net::SocketAddr;

use anyhow::Context;
use sqlx::{PgConnection, PgPool};
use time::{Date, Month, OffsetDateTime};

use crate::db;

/// The kinds of audited events (the `event_type` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Authorization,
    Enrollment,
    Renewal,
    Revocation,
    Token,
    User,
    Health,
    /// The operator console: sign-ins (and refused ones) and sign-outs.
    Console,
    /// Agent releases published and rollouts set.
    Release,
    /// A step of an agent's self-update, as the device reported it.
    #[serde(rename = "agent_update")]
    AgentUpdate,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorization => "authorization",
            Self::Enrollment => "enrollment",
            Self::Renewal => "renewal",
            Self::Revocation => "revocation",
            Self::Token => "token",
            Self::User => "user",
            Self::Health => "health",
            Self::Console => "console",
            Self::Release => "release",
            Self::AgentUpdate => "agent_update",
        }
    }
}

/// One control-plane event, built with the setters and written with [`Event::record`].
#[derive(Debug, Clone)]
pub struct Event {
    event_type: EventType,
    action: &'static str,
    device: Option<String>,
    user: Option<String>,
    role: Option<String>,
    certificate_serial: Option<String>,
    decision: Option<&'static str>,
    reasons: Vec<String>,
    peer: Option<SocketAddr>,
    details: serde_json::Value,
}

impl Event {
    pub fn new(event_type: EventType, action: &'static str) -> Self {
        Self {
            event_type,
            action,
            device: None,
            user: None,
            role: None,
            certificate_serial: None,
            decision: None,
            reasons: Vec::new(),
            peer: None,
            details: serde_json::json!({}),
        }
    }

    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = Some(role.into());
        self
    }

    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.certificate_serial = Some(serial.into());
        self
    }

    /// A refusal: the decision is `deny` with these reasons.
    pub fn refused(mut self, reasons: Vec<String>) -> Self {
        self.decision = Some("deny");
        self.reasons = reasons;
        self
    }

    pub fn reasons(mut self, reasons: Vec<String>) -> Self {
        self.reasons = reasons;
        self
    }

    pub fn peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = peer;
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// Writes the event on `conn`: pass the transaction of the change it describes, so both commit or
    /// neither does.
    pub async fn record(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let entry = db::audit::Entry {
            event_type: self.event_type.as_str(),
            action: self.action,
            device: self.device.as_deref(),
            user: self.user.as_deref(),
            role: self.role.as_deref(),
            certificate_serial: self.certificate_serial.as_deref(),
            decision: self.decision,
            reasons: &self.reasons,
            peer: self.peer.map(|p| p.to_string()),
            details: &self.details,
        };
        db::audit::insert(conn, &entry).await
    }
}

/// How the audit partitions are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Months created ahead of the current one.
    pub months_ahead: u32,
    /// Records older than this many days are dropped (whole monthly partitions once entirely older);
    /// `None` keeps everything.
    pub keep_days: Option<u32>,
}

/// What one maintenance pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
}

/// Creates the partitions of the current month and the next `months_ahead`, and drops the partitions
/// (and default-partition rows) entirely older than the retention. `now` is a parameter for tests.
pub async fn maintain(
    db: &PgPool,
    retention: Retention,
    now: OffsetDateTime,
) -> anyhow::Result<Maintenance> {
    let mut done = Maintenance::default();
    let mut month = first_of_month(now.date());
    for _ in 0..=retention.months_ahead {
        let created = db::audit::create_partition(db, month)
            .await
            .context("failed to create an audit partition")?;
        if created {
            done.created.push(partition_name(month));
        }
        month = next_month(month);
    }
    let Some(keep_days) = retention.keep_days else {
        return Ok(done);
    };
    let cutoff = now - time::Duration::days(i64::from(keep_days));
    // Dropping runs as the tables' owner (the function is SECURITY DEFINER): the control API's own
    // role may not drop or delete audit records.
    done.dropped = db::audit::retain(db, cutoff)
        .await
        .context("failed to drop audit partitions past the retention")?;
    Ok(done)
}

fn first_of_month(date: Date) -> Date {
    date.replace_day(1).unwrap_or(date)
}

fn next_month(first: Date) -> Date {
    let (year, month) = match first.month() {
        Month::December => (first.year() + 1, Month::January),
        m => (first.year(), m.next()),
    };
    Date::from_calendar_date(year, month, 1).unwrap_or(first)
}

fn partition_name(first: Date) -> String {
    format!(
        "audit_log_p{:04}{:02}",
        first.year(),
        u8::from(first.month())
    )
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn partition_names_and_months_roll_over() {
        assert_eq!(partition_name(date!(2026 - 12 - 01)), "audit_log_p202612");
        assert_eq!(partition_name(date!(2027 - 01 - 01)), "audit_log_p202701");
        assert_eq!(next_month(date!(2026 - 12 - 01)), date!(2027 - 01 - 01));
        assert_eq!(first_of_month(date!(2026 - 11 - 22)), date!(2026 - 11 - 01));
    }
}
