// lowrank.cu — low-rank projection out[B,H,T,latent_out] = x[B,Hin,T,D] . W[H,D,N] (i8x4 words
// along D), dequantized as (acc * w_scale) * a_scale. One entry per input variant (KernelId);
// the module is compiled per (LB_MODE, LB_UNS, tiled | small-M) from the Rust side.
//
// Glossary: see common.cuh. Grid: tiled (ceil(latent_out/BN), ceil(M/BM), H); small-M
// (ceil(latent_out/SM_COLS), H); float path (ceil(latent_out/64), ceil(M/64), H).

#ifndef LB_UNS
#define LB_UNS 0
#endif

#if defined(LB_FLOAT)
extern "C" __global__ void __launch_bounds__(256) lowrank_float(LbProblem p) { lb_float(p); }
#elif LB_MODE == LB_A_PACKED
extern "C" __global__ void __launch_bounds__(LB_THREADS, LB_MIN_BLOCKS) lowrank_packed(LbProblem p) {
    lb_project<LB_A_PACKED, LB_UNS != 0>(p);  // UNS: words packed from uint8pos codes
}
#elif LB_MODE == LB_A_CODES
extern "C" __global__ void __launch_bounds__(LB_THREADS, LB_MIN_BLOCKS) lowrank_codes(LbProblem p) {
    lb_project<LB_A_CODES, LB_UNS != 0>(p);
}
#elif LB_MODE == LB_A_F32
extern "C" __global__ void __launch_bounds__(LB_THREADS, LB_MIN_BLOCKS) lowrank_f32(LbProblem p) {
    lb_project<LB_A_F32, LB_UNS != 0>(p);
}
#endif
