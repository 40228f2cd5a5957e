//! Host-side bindings generated from `wit/machine.wit`: the `state-machine` world's exports
//! (`StateMachine`, `StateMachinePre`) and the `wraft:machine/host` and `types` definitions.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "state-machine",
});
