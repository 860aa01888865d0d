//! diag's kernel-side programs. Entry points are thin; the work is in
//! `try_*` functions that return `Result<u32, u32>`.
#![no_std]
#![no_main]
// Atomic adds on map values (see sched.rs); the crate is built with
// RUSTC_BOOTSTRAP=1 already, for aya-ebpf.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod block;
mod lock;
mod maps;
mod memory;
mod oom;
mod proc;
mod sched;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
