use clap::Parser;

use capturelink::config::Cli;

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(capturelink::ops::run(Cli::parse().into_command()))
}

/// At most two glibc malloc arenas, unless `MALLOC_ARENA_MAX` says otherwise.
///
/// glibc gives a thread that allocates while the others hold their arenas one of its own, up to
/// eight per core, and an arena keeps the memory it once held. Every decoding thread of the
/// blocking pool thus kept the ~8.5 MiB of buffers of its last 1080p decode (the soak's steps in
/// docs/BENCHMARKS.md), and fresh arenas make fresh page faults for each decode's buffers. With two
/// arenas the soak's RSS was 40 to 50 MiB lower, and uploads and the relay no slower.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: the first thing the process does, before any other thread exists; mallopt only
        // sets one of the allocator's tunables.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
