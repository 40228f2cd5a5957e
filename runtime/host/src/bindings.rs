//! Host-side bindings generated from `wit/machine.wit`: the `state-machine` world's exports
//! (`StateMachine`, `StateMachinePre`) and the `wraft:machine/host` and `types` definitions.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "state-machine",
    // An export's parameters borrow (`entry.command` is a `&[u8]`): a committed entry's bytes
    // go from the log's buffer straight into guest memory, with no copy of their own per call.
    ownership: Borrowing { duplicate_if_necessary: false },
});
