// What every GPGPU-Sim harness in this folder shares: CK(call) stops the program with the
// failing CUDA call, its place and CUDA's message.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CK(x)                                                                                            \
    do {                                                                                                 \
        cudaError_t e = (x);                                                                             \
        if (e != cudaSuccess) {                                                                          \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e)); \
            exit(1);                                                                                     \
        }                                                                                                \
    } while (0)
