//! User space of the overlay datapath: loading its programs, and the typed
//! view of its maps that the agent (and tests) program.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, Xdp},
};
use swarm_common::{
    lb::{Backend, BackendKey, Flow, FlowKey, Frontend, FrontendKey},
    names::{
        MAP_OVERLAY_CONFIG, MAP_OVERLAY_DROPS, MAP_OVERLAY_ENDPOINTS, MAP_OVERLAY_EVENTS, MAP_OVERLAY_HOSTS,
        MAP_OVERLAY_LOCAL, MAP_OVERLAY_NETWORKS, MAP_SERVICE_BACKENDS, MAP_SERVICE_FLOWS,
        MAP_SERVICE_FRONTENDS,
    },
    overlay::{
        DropReason, EndpointInfo, EndpointKey, Event, HostConfig, HostKey, LocalEndpoint, NetworkInfo,
    },
    stats::Counter,
};

use super::DatapathError;

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// A TC program of the object, loaded into the kernel (verified).
pub fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program { op: "opening", program: name, source })?;
    if prog.fd().is_err() {
        prog.load().map_err(|source| DatapathError::Program { op: "loading", program: name, source })?;
    }
    Ok(prog)
}

/// An XDP program of the object, loaded into the kernel (verified).
pub fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program { op: "opening", program: name, source })?;
    if prog.fd().is_err() {
        prog.load().map_err(|source| DatapathError::Program { op: "loading", program: name, source })?;
    }
    Ok(prog)
}

/// The overlay maps of a loaded object.
pub struct Maps<'a> {
    ebpf: &'a mut Ebpf,
}

impl<'a> Maps<'a> {
    pub fn new(ebpf: &'a mut Ebpf) -> Maps<'a> {
        Maps { ebpf }
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DatapathError> {
        self.ebpf.map_mut(name).ok_or(DatapathError::MissingMap(name))
    }

    pub fn set_config(&mut self, cfg: HostConfig) -> Result<(), DatapathError> {
        let mut a: Array<&mut MapData, HostConfig> =
            Array::try_from(self.map(MAP_OVERLAY_CONFIG)?).map_err(map_err(MAP_OVERLAY_CONFIG))?;
        a.set(0, cfg, 0).map_err(map_err(MAP_OVERLAY_CONFIG))
    }

    pub fn set_network(&mut self, vni: u32, info: NetworkInfo) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, u32, NetworkInfo> =
            HashMap::try_from(self.map(MAP_OVERLAY_NETWORKS)?).map_err(map_err(MAP_OVERLAY_NETWORKS))?;
        m.insert(vni, info, 0).map_err(map_err(MAP_OVERLAY_NETWORKS))
    }

    pub fn remove_network(&mut self, vni: u32) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, u32, NetworkInfo> =
            HashMap::try_from(self.map(MAP_OVERLAY_NETWORKS)?).map_err(map_err(MAP_OVERLAY_NETWORKS))?;
        ignore_missing(m.remove(&vni)).map_err(map_err(MAP_OVERLAY_NETWORKS))
    }

    pub fn set_endpoint(&mut self, key: EndpointKey, info: EndpointInfo) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, EndpointKey, EndpointInfo> =
            HashMap::try_from(self.map(MAP_OVERLAY_ENDPOINTS)?).map_err(map_err(MAP_OVERLAY_ENDPOINTS))?;
        m.insert(key, info, 0).map_err(map_err(MAP_OVERLAY_ENDPOINTS))
    }

    pub fn remove_endpoint(&mut self, key: EndpointKey) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, EndpointKey, EndpointInfo> =
            HashMap::try_from(self.map(MAP_OVERLAY_ENDPOINTS)?).map_err(map_err(MAP_OVERLAY_ENDPOINTS))?;
        ignore_missing(m.remove(&key)).map_err(map_err(MAP_OVERLAY_ENDPOINTS))
    }

    pub fn endpoints(&mut self) -> Result<Vec<(EndpointKey, EndpointInfo)>, DatapathError> {
        let m: HashMap<&mut MapData, EndpointKey, EndpointInfo> =
            HashMap::try_from(self.map(MAP_OVERLAY_ENDPOINTS)?).map_err(map_err(MAP_OVERLAY_ENDPOINTS))?;
        m.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(MAP_OVERLAY_ENDPOINTS))
    }

    pub fn set_local(&mut self, ifindex: u32, ep: LocalEndpoint) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, u32, LocalEndpoint> =
            HashMap::try_from(self.map(MAP_OVERLAY_LOCAL)?).map_err(map_err(MAP_OVERLAY_LOCAL))?;
        m.insert(ifindex, ep, 0).map_err(map_err(MAP_OVERLAY_LOCAL))
    }

    pub fn remove_local(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, u32, LocalEndpoint> =
            HashMap::try_from(self.map(MAP_OVERLAY_LOCAL)?).map_err(map_err(MAP_OVERLAY_LOCAL))?;
        ignore_missing(m.remove(&ifindex)).map_err(map_err(MAP_OVERLAY_LOCAL))
    }

    pub fn set_host(&mut self, ip: [u8; 4]) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, HostKey, u32> =
            HashMap::try_from(self.map(MAP_OVERLAY_HOSTS)?).map_err(map_err(MAP_OVERLAY_HOSTS))?;
        m.insert(HostKey { ip }, 1, 0).map_err(map_err(MAP_OVERLAY_HOSTS))
    }

    pub fn remove_host(&mut self, ip: [u8; 4]) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, HostKey, u32> =
            HashMap::try_from(self.map(MAP_OVERLAY_HOSTS)?).map_err(map_err(MAP_OVERLAY_HOSTS))?;
        ignore_missing(m.remove(&HostKey { ip })).map_err(map_err(MAP_OVERLAY_HOSTS))
    }

    pub fn hosts(&mut self) -> Result<Vec<[u8; 4]>, DatapathError> {
        let m: HashMap<&mut MapData, HostKey, u32> =
            HashMap::try_from(self.map(MAP_OVERLAY_HOSTS)?).map_err(map_err(MAP_OVERLAY_HOSTS))?;
        m.keys().map(|k| k.map(|k| k.ip)).collect::<Result<Vec<_>, _>>().map_err(map_err(MAP_OVERLAY_HOSTS))
    }

    /// Drop counters, summed over CPUs, for every reason.
    pub fn drops(&mut self) -> Result<Vec<(DropReason, Counter)>, DatapathError> {
        let a: PerCpuArray<&mut MapData, Counter> =
            PerCpuArray::try_from(self.map(MAP_OVERLAY_DROPS)?).map_err(map_err(MAP_OVERLAY_DROPS))?;
        DropReason::ALL
            .iter()
            .map(|r| {
                let v = a.get(&r.index(), 0).map_err(map_err(MAP_OVERLAY_DROPS))?;
                Ok((*r, v.iter().fold(Counter::default(), |s, c| s.plus(*c))))
            })
            .collect()
    }

    /// Event counters, summed over CPUs.
    pub fn events(&mut self) -> Result<Vec<(Event, Counter)>, DatapathError> {
        let a: PerCpuArray<&mut MapData, Counter> =
            PerCpuArray::try_from(self.map(MAP_OVERLAY_EVENTS)?).map_err(map_err(MAP_OVERLAY_EVENTS))?;
        Event::ALL
            .iter()
            .map(|e| {
                let v = a.get(&e.index(), 0).map_err(map_err(MAP_OVERLAY_EVENTS))?;
                Ok((*e, v.iter().fold(Counter::default(), |s, c| s.plus(*c))))
            })
            .collect()
    }
}

/// Removing what is not there is not an error.
fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        r => r,
    }
}

/// The service load-balancing maps of a loaded object.
pub struct LbMaps<'a> {
    ebpf: &'a mut Ebpf,
}

impl<'a> LbMaps<'a> {
    pub fn new(ebpf: &'a mut Ebpf) -> LbMaps<'a> {
        LbMaps { ebpf }
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DatapathError> {
        self.ebpf.map_mut(name).ok_or(DatapathError::MissingMap(name))
    }

    pub fn frontends(&mut self) -> Result<Vec<(FrontendKey, Frontend)>, DatapathError> {
        let m: HashMap<&mut MapData, FrontendKey, Frontend> =
            HashMap::try_from(self.map(MAP_SERVICE_FRONTENDS)?).map_err(map_err(MAP_SERVICE_FRONTENDS))?;
        m.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(MAP_SERVICE_FRONTENDS))
    }

    pub fn set_frontend(&mut self, key: FrontendKey, fe: Frontend) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, FrontendKey, Frontend> =
            HashMap::try_from(self.map(MAP_SERVICE_FRONTENDS)?).map_err(map_err(MAP_SERVICE_FRONTENDS))?;
        m.insert(key, fe, 0).map_err(map_err(MAP_SERVICE_FRONTENDS))
    }

    pub fn remove_frontend(&mut self, key: FrontendKey) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, FrontendKey, Frontend> =
            HashMap::try_from(self.map(MAP_SERVICE_FRONTENDS)?).map_err(map_err(MAP_SERVICE_FRONTENDS))?;
        ignore_missing(m.remove(&key)).map_err(map_err(MAP_SERVICE_FRONTENDS))
    }

    pub fn backend(&mut self, key: BackendKey) -> Result<Option<Backend>, DatapathError> {
        let m: HashMap<&mut MapData, BackendKey, Backend> =
            HashMap::try_from(self.map(MAP_SERVICE_BACKENDS)?).map_err(map_err(MAP_SERVICE_BACKENDS))?;
        match m.get(&key, 0) {
            Ok(b) => Ok(Some(b)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(MAP_SERVICE_BACKENDS)(e)),
        }
    }

    pub fn set_backend(&mut self, key: BackendKey, b: Backend) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, BackendKey, Backend> =
            HashMap::try_from(self.map(MAP_SERVICE_BACKENDS)?).map_err(map_err(MAP_SERVICE_BACKENDS))?;
        m.insert(key, b, 0).map_err(map_err(MAP_SERVICE_BACKENDS))
    }

    pub fn remove_backend(&mut self, key: BackendKey) -> Result<(), DatapathError> {
        let mut m: HashMap<&mut MapData, BackendKey, Backend> =
            HashMap::try_from(self.map(MAP_SERVICE_BACKENDS)?).map_err(map_err(MAP_SERVICE_BACKENDS))?;
        ignore_missing(m.remove(&key)).map_err(map_err(MAP_SERVICE_BACKENDS))
    }

    /// The flow table (for inspection and tests).
    pub fn flows(&mut self) -> Result<Vec<(FlowKey, Flow)>, DatapathError> {
        let m: HashMap<&mut MapData, FlowKey, Flow> =
            HashMap::try_from(self.map(MAP_SERVICE_FLOWS)?).map_err(map_err(MAP_SERVICE_FLOWS))?;
        m.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(MAP_SERVICE_FLOWS))
    }
}
