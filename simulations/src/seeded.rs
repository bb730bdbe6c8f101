//! Randomness drawn from the run's seed.
//!
//! Everything random in a node — gossip peer selection, hash map order, QUIC connection ids,
//! TLS keys — ends in the C library's `getrandom`. This binary defines `getrandom` itself
//! (build.rs exports it, so the libraries' run-time look-up finds it before the C
//! library's): on a thread that called [`seed_this_thread`] it fills the buffer from a
//! ChaCha stream keyed by the seed; elsewhere it asks the kernel as usual. A simulation runs
//! on one thread, so the same seed gives the same bytes in the same order.

use std::{
    cell::RefCell,
    ffi::{c_uint, c_void},
};

use rand_chacha::{
    ChaCha20Rng,
    rand_core::{RngCore, SeedableRng},
};

thread_local! {
    static STREAM: RefCell<Option<ChaCha20Rng>> = const { RefCell::new(None) };
}

/// From now on, randomness asked for on this thread comes from `seed`.
pub fn seed_this_thread(seed: u64) {
    // Keep the symbol in the final binary even though nothing in Rust calls it.
    std::hint::black_box(getrandom as *const ());
    STREAM.with(|s| *s.borrow_mut() = Some(ChaCha20Rng::seed_from_u64(seed)));
}

/// Whether this thread's randomness really comes from the seed: `getrandom`, as the
/// libraries find it, is this crate's.
pub fn is_seeded() -> bool {
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    STREAM.with(|s| {
        let saved = s.borrow().clone();
        let Some(mut probe) = saved.clone() else {
            return false;
        };
        probe.fill_bytes(&mut a);
        getrandom_from_libs(&mut b);
        *s.borrow_mut() = saved;
        a == b
    })
}

fn getrandom_from_libs(buf: &mut [u8]) {
    // The same look-up the `getrandom` crate and std make.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"getrandom".as_ptr()) };
    if f.is_null() {
        return;
    }
    let f: unsafe extern "C" fn(*mut c_void, usize, c_uint) -> isize =
        unsafe { std::mem::transmute(f) };
    unsafe { f(buf.as_mut_ptr().cast(), buf.len(), 0) };
}

/// `getrandom(2)` as the C library declares it.
///
/// # Safety
/// `buf` must be valid for `len` bytes of writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getrandom(buf: *mut c_void, len: usize, flags: c_uint) -> isize {
    let seeded = STREAM
        .try_with(|s| match s.try_borrow_mut() {
            Ok(mut stream) => match stream.as_mut() {
                Some(stream) => {
                    // SAFETY: the caller promises `buf` is writable for `len` bytes.
                    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
                    stream.fill_bytes(out);
                    true
                }
                None => false,
            },
            Err(_) => false,
        })
        .unwrap_or(false);
    if seeded {
        return len as isize;
    }
    // SAFETY: forwards the caller's arguments to the kernel.
    unsafe { libc::syscall(libc::SYS_getrandom, buf, len, flags) as isize }
}
