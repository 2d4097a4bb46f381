//! VM isolation: amphi's own VMM (KVM, guest memory, vCPUs, devices), guest
//! boot, guest image assembly and the agent client.
