//! `mesh-lb`: Discovery, subsets and load balancers (round robin, least request, ring hash, maglev, EWMA) for the mesh SDK.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
