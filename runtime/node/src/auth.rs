//! Who may do what: three roles, the same for QUIC clients and the HTTP API.
//!
//! | role | may |
//! |---|---|
//! | `read` | query machines, read status, machine and snapshot lists, watch |
//! | `write` | what `read` may, propose commands, open sessions |
//! | `admin` | everything: deploy and remove machines, change the membership, move leadership, take and read snapshots, change the transfer rate |
//!
//! A client certificate's role comes from this node's `[client]` configuration
//! (`admin_clients`, `read_only_clients`; any other certificate of the cluster CA has `write`);
//! a bearer token carries its role, signed ([`crate::tokens`]). A member node's certificate has
//! `admin`: a node forwards only what it has already authorised for its own caller.
//! Authorisation is node-local and never enters replicated state: it decides whether a request
//! reaches the log, not what the log does.

use std::fmt;
use std::str::FromStr;

use wraft_config::ClientSection;
use wraft_proto::{Request, RequestError};
use wraft_transport::Identity;

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads only.
    Read,
    /// Reads and commands.
    Write,
    /// Everything.
    Admin,
}

impl Role {
    /// The role's name as configured and shown: `read`, `write`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not `read`, `write` or `admin`.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?}: the roles are read, write and admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "read" | "read-only" => Ok(Role::Read),
            "write" | "read-write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// An authenticated caller: who (for logs and refusals) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `client "ops"`, `node 2`, `token "dashboard" (id 3f…)`.
    pub who: String,
    /// What it may do.
    pub role: Role,
}

impl Caller {
    /// The caller behind a verified certificate.
    pub fn of_identity(identity: &Identity, limits: &ClientSection) -> Caller {
        let role = match identity {
            Identity::Node(_) => Role::Admin,
            Identity::Client(name) if limits.admin_clients.contains(name) => Role::Admin,
            Identity::Client(name) if limits.read_only_clients.contains(name) => Role::Read,
            Identity::Client(_) => Role::Write,
        };
        Caller {
            who: identity.to_string(),
            role,
        }
    }

    /// `Ok` if this caller may send `request`, else a [`RequestError::Forbidden`] naming the
    /// role needed and where roles come from.
    pub fn authorize(&self, request: &Request) -> Result<(), RequestError> {
        let needed = required_role(request);
        if self.role >= needed {
            return Ok(());
        }
        Err(RequestError::Forbidden(format!(
            "{} needs the {needed} role; {} has the {} role (certificates: client.admin_clients \
             and client.read_only_clients; tokens: `wraft token create --role`)",
            request_what(request),
            self.who,
            self.role
        )))
    }
}

/// The least role that may send `request`.
pub fn required_role(request: &Request) -> Role {
    match request {
        Request::Query { .. }
        | Request::Machines
        | Request::Status
        | Request::Snapshots
        | Request::NodeInfo
        | Request::Transfers => Role::Read,
        Request::Propose { .. } | Request::OpenSession => Role::Write,
        Request::Deploy { .. }
        | Request::DeployWith { .. }
        | Request::RemoveMachine { .. }
        | Request::AddLearner { .. }
        | Request::Promote { .. }
        | Request::RemoveMember { .. }
        | Request::TransferLeader { .. }
        | Request::SnapshotTrigger
        | Request::SetTransferRate { .. }
        | Request::SnapshotRead { .. }
        | Request::ModuleHas { .. }
        | Request::ModulePut { .. }
        | Request::ModuleGet { .. }
        | Request::SnapshotSegmentsHeld { .. }
        | Request::SnapshotSegment { .. } => Role::Admin,
    }
}

/// What `request` does, in words, for a refusal.
fn request_what(request: &Request) -> &'static str {
    match request {
        Request::Query { .. } => "a query",
        Request::Machines => "listing machines",
        Request::Status => "reading status",
        Request::Snapshots => "listing snapshots",
        Request::NodeInfo => "reading node information",
        Request::Transfers => "reading snapshot transfers",
        Request::Propose { .. } => "proposing a command",
        Request::OpenSession => "opening a session",
        Request::Deploy { .. } | Request::DeployWith { .. } => "deploying a machine",
        Request::RemoveMachine { .. } => "removing a machine",
        Request::AddLearner { .. } => "adding a member",
        Request::Promote { .. } => "promoting a learner",
        Request::RemoveMember { .. } => "removing a member",
        Request::TransferLeader { .. } => "moving leadership",
        Request::SnapshotTrigger => "taking a snapshot",
        Request::SetTransferRate { .. } => "changing the snapshot transfer rate",
        Request::SnapshotRead { .. } => "reading a snapshot",
        Request::ModuleHas { .. } | Request::ModuleGet { .. } => "reading a module",
        Request::ModulePut { .. } => "storing a module",
        Request::SnapshotSegmentsHeld { .. } | Request::SnapshotSegment { .. } => {
            "reading snapshot segments"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ClientSection {
        ClientSection {
            read_only_clients: vec!["viewer".into()],
            ..ClientSection::default()
        }
    }

    #[test]
    fn certificate_roles_come_from_the_client_section() {
        let l = limits();
        let role = |i: Identity| Caller::of_identity(&i, &l).role;
        assert_eq!(role(Identity::Client("admin".into())), Role::Admin);
        assert_eq!(role(Identity::Client("viewer".into())), Role::Read);
        assert_eq!(role(Identity::Client("app".into())), Role::Write);
        assert_eq!(role(Identity::Node(2)), Role::Admin);
    }

    #[test]
    fn each_role_is_refused_exactly_what_is_above_it() {
        let l = limits();
        let viewer = Caller::of_identity(&Identity::Client("viewer".into()), &l);
        let app = Caller::of_identity(&Identity::Client("app".into()), &l);
        let query = Request::Query {
            machine: "kv".into(),
            request: vec![],
            consistency: Default::default(),
        };
        let propose = Request::Propose {
            tag: wraft_proto::RequestTag {
                client_id: 1,
                seq: 1,
            },
            machine: "kv".into(),
            command: vec![],
        };
        let remove = Request::RemoveMachine {
            tag: wraft_proto::RequestTag {
                client_id: 1,
                seq: 1,
            },
            name: "kv".into(),
        };
        assert!(viewer.authorize(&query).is_ok());
        let refused = viewer.authorize(&propose).unwrap_err();
        assert!(
            matches!(&refused, RequestError::Forbidden(m) if m.contains("needs the write role") && m.contains("client \"viewer\"")),
            "{refused:?}"
        );
        assert!(app.authorize(&propose).is_ok());
        assert!(matches!(
            app.authorize(&remove),
            Err(RequestError::Forbidden(_))
        ));
    }

    #[test]
    fn role_names_parse_with_their_long_forms() {
        assert_eq!("read-only".parse::<Role>().unwrap(), Role::Read);
        assert_eq!("write".parse::<Role>().unwrap(), Role::Write);
        assert!("root".parse::<Role>().is_err());
    }
}
