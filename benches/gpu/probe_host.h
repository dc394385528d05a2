// probe_host.h — host side shared by the standalone nvcc probes in benches/gpu/
// (wgmma_rate.cu, dram_rate.cu): the headers they use and CK, which exits on a CUDA error.
#pragma once
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
            std::exit(1);                                                                       \
        }                                                                                       \
    } while (0)

// The median CUDA-event time, in ms, of launch(1) .. launch(reps), after a warm-up launch(0)
// (the argument lets a probe vary its input, or shorten the warm-up).
template <typename Launch>
float probe_median_ms(int reps, Launch launch) {
    launch(0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ms;
    for (int rep = 1; rep <= reps; ++rep) {
        CK(cudaEventRecord(e0));
        launch(rep);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float t = 0;
        CK(cudaEventElapsedTime(&t, e0, e1));
        ms.push_back(t);
    }
    CK(cudaGetLastError());
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

// Prints the device's name and SM count (then `what`) and returns the SM count.
inline int probe_device(const char* what) {
    int dev = 0, sms = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    std::printf("%s, %d SMs%s\n", prop.name, sms, what);
    return sms;
}
