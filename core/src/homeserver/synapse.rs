//! STUB: Synapse `/_synapse/mas/*` connection.
pub struct SynapseConnection;
