//! The `dnsward` binary: hands the command line to `cli`.

mod cli;

/// mimalloc instead of the system allocator: the query path still allocates (hickory's request
/// and response types), and a list reload allocates and frees hundreds of MB; glibc's malloc
/// returned that memory with munmap, whose TLB shootdowns stalled the query threads (p99 under
/// reloads in bench/reload.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
