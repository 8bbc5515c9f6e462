//! EdgeMesh's external authorization server for Envoy. So far: the policy set (Rego, evaluated
//! in-process by regorus) and its operator commands; the gRPC Check server is the next step.

pub mod policy;
