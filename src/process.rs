//! Process tweaks for stage two's training loop: the allocator's policy and the loader
//! thread's priority. Both are no-ops off Linux (and the first off glibc).

/// Tells glibc's malloc to keep freed memory for reuse instead of returning it to the
/// system. A training step allocates and frees the same large tensors every step (flex
/// allocates every intermediate); by default glibc maps blocks over its adaptive threshold
/// fresh from the kernel and trims the heap's free top, so each step paid page faults and
/// zeroing for memory it had just given back (~15 % of a flex encoder step in `perf`).
/// Blocks up to 32 MiB (glibc's maximum) now come from the heap, which is trimmed only past
/// 1 GiB free. `benches/stage_two.sh`: flex encoder 750-780 -> 900-1 020 rows/s, LM
/// 3 700-4 200 -> 4 300-4 700 positions/s. Peak memory is unchanged; the process keeps it.
pub(crate) fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: mallopt only sets two of malloc's tuning parameters; called before training
        // allocates, and valid values (it returns 0, ignored, for values it refuses).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// Lower the calling thread's scheduling priority (nice 19): the loader thread then runs in
/// the gaps the training threads leave instead of taking turns with them (on 2 cores a
/// loader at normal priority slowed the training steps by more than its own work).
pub(crate) fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn setpriority(which: std::ffi::c_int, who: std::ffi::c_uint, prio: std::ffi::c_int) -> std::ffi::c_int;
            fn gettid() -> std::ffi::c_int;
        }
        const PRIO_PROCESS: std::ffi::c_int = 0;
        // SAFETY: on Linux, setpriority(PRIO_PROCESS, tid) changes only this thread's nice
        // value; raising it needs no privilege. A failure (ignored) leaves the priority as is.
        unsafe {
            setpriority(PRIO_PROCESS, gettid() as std::ffi::c_uint, 19);
        }
    }
}
