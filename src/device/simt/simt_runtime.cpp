// SIMT runtime: fibers, the block scheduler, barriers and warp collectives.
// The model and its checks are described in simt_runtime.h.
// The standard headers come first: simt_runtime.h defines CUDA's keywords as macros
// (`__noinline__` among them), which libstdc++'s own headers use as attribute names.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "simt_runtime.h"

// The hand-written stack switch on x86-64; glibc's ucontext elsewhere, or when the build asks
// for it (EMRCLASS_SIMT_FIBERS=ucontext), which is how the fallback gets tested on x86-64.
#if defined(__x86_64__) && !defined(SIMT_FORCE_UCONTEXT)
#define SIMT_ASM_FIBERS 1
#else
#define SIMT_ASM_FIBERS 0
#include <ucontext.h>
#endif

namespace simt {

__thread FiberPublic *current_fiber;
__thread uint3 current_block_idx;
__thread dim3 current_block_dim;
__thread dim3 current_grid_dim;

// Static shared arrays already poisoned in the block now running (cleared at each block).
thread_local std::vector<void *> poisoned_static_shared;

void poison_static_shared(void *array, size_t bytes) {
    for (void *p : poisoned_static_shared)
        if (p == array) return;
    poisoned_static_shared.push_back(array);
    const uint32_t nan_bits = 0x7fc00000u;
    unsigned char *b = (unsigned char *)array;
    for (size_t i = 0; i + 4 <= bytes; i += 4) std::memcpy(b + i, &nan_bits, 4);
}

namespace {

// ---------------------------------------------------------------- fiber switching
// x86-64: save the callee-saved registers, MXCSR and the x87 control word on the old stack,
// store its rsp, load the new one and restore. ~8 ns, against ~160 ns for swapcontext,
// which makes a signal-mask syscall on every switch.
#if SIMT_ASM_FIBERS
extern "C" void simt_switch_stack(void **save_sp, void *load_sp);
extern "C" void simt_fiber_entry();
asm(R"(
.text
.globl simt_switch_stack
.type simt_switch_stack,@function
simt_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size simt_switch_stack,.-simt_switch_stack
.globl simt_fiber_entry
.type simt_fiber_entry,@function
simt_fiber_entry:
    movq %r12, %rdi
    call simt_fiber_main
    ud2
.size simt_fiber_entry,.-simt_fiber_entry
)");
#endif

struct Fiber;
extern "C" void simt_fiber_main(Fiber *fiber);

// A suspended execution context: on x86-64 the stack pointer (the registers are saved on that
// stack), elsewhere a ucontext_t. switch_context saves the running one into `from` and resumes
// `to`.
#if SIMT_ASM_FIBERS
struct Context {
    void *sp = nullptr;
};
inline void switch_context(Context &from, Context &to) { simt_switch_stack(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
};
inline void switch_context(Context &from, Context &to) { swapcontext(&from.uc, &to.uc); }
#endif

enum FiberState { RUNNABLE, AT_BARRIER, AT_WARP_OP, EXITED };

struct Fiber {
    FiberPublic pub;  // first: `threadIdx` reads it through current_fiber
    int linear = 0;
    FiberState state = RUNNABLE;
    uint64_t warp_result = 0;
    void *stack_base = nullptr;  // lowest address, including the guard page
    size_t stack_bytes = 0;
    Context context;
};

struct WarpOp {
    WarpOpKind kind;
    unsigned mask;
    unsigned arrived;
    SourceLoc loc;
    int width;
    uint64_t values[32];
    int args[32];
};

// How many times each lane of a warp has completed the collective at one source location, and
// with which mask: a lane arriving there finds out whether a lane it names already went
// through the same instance without it (mismatched masks, even when the two never overlap
// in time).
struct LocHistory {
    SourceLoc loc;
    unsigned count[32];
    unsigned mask[32];
};

enum BarrierKind { BARRIER_PLAIN, BARRIER_COUNT, BARRIER_AND, BARRIER_OR };

struct Launch {
    void (*kernel)(void **);
    void **args;
    const char *kernel_name;
    unsigned threads_per_block;
    std::vector<Fiber> fibers;
    std::vector<std::vector<WarpOp>> warp_ops;  // pending collectives, per warp
    std::vector<std::vector<LocHistory>> warp_history;  // completed collectives, per warp
    std::vector<unsigned char> dynamic_shared;
    unsigned shared_bytes;
    // the barrier in progress
    unsigned barrier_arrived;
    SourceLoc barrier_loc;
    BarrierKind barrier_kind;
    int barrier_accum;
    int barrier_first_thread;
    int exited;
    bool failed;
    std::string error;
    // The round in progress: fibers in the order they run, and the position reached. A fiber
    // that yields hands over to the next runnable one itself; the last goes back to the
    // scheduler, which starts the next round.
    std::vector<unsigned> order;
    unsigned cursor;
    Context scheduler;
};

__thread Launch *launch;

const size_t STACK_BYTES = 128 * 1024;

size_t page_size() {
    static size_t size = (size_t)sysconf(_SC_PAGESIZE);
    return size;
}

// Stacks are kept per OS thread and reused across blocks and launches; each has a
// PROT_NONE guard page below it so an overflow faults instead of corrupting a neighbour.
struct StackPool {
    std::vector<std::pair<void *, size_t>> stacks;
    ~StackPool() {
        for (auto &s : stacks) munmap(s.first, s.second);
    }
    bool ensure(size_t count) {
        while (stacks.size() < count) {
            size_t bytes = STACK_BYTES + page_size();
            void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) return false;
            if (mprotect(p, page_size(), PROT_NONE) != 0) {
                munmap(p, bytes);
                return false;
            }
            stacks.push_back({p, bytes});
        }
        return true;
    }
};
thread_local StackPool stack_pool;

std::string describe_thread(const Fiber &f) {
    char buf[160];
    snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", current_block_idx.x, current_block_idx.y,
             current_block_idx.z, f.pub.thread_idx.x, f.pub.thread_idx.y, f.pub.thread_idx.z);
    return buf;
}

std::string describe_loc(SourceLoc loc) { return std::string(loc.file) + ":" + std::to_string(loc.line); }

// The file names are string literals: usually the same pointer, compared by text otherwise.
bool same_loc(SourceLoc a, SourceLoc b) {
    return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

Fiber &self() { return *reinterpret_cast<Fiber *>(current_fiber); }

// The calling fiber stops here until it is scheduled again: control passes to the next
// runnable fiber of this round, in the round's order (what the scheduler's loop would pick,
// with one stack switch instead of two), or to the scheduler when the round is over or the
// launch has failed.
void switch_to_scheduler() {
    Launch &l = *launch;
    Fiber &f = self();
    if (!l.failed) {
        while (++l.cursor < l.order.size()) {
            Fiber &g = l.fibers[l.order[l.cursor]];
            if (g.state != RUNNABLE) continue;
            current_fiber = &g.pub;
            switch_context(f.context, g.context);
            return;
        }
    }
    switch_context(f.context, l.scheduler);
}

[[noreturn]] void fail(const std::string &message) {
    if (!launch->failed) {
        launch->failed = true;
        launch->error = std::string("kernel ") + launch->kernel_name + ", " + describe_thread(self()) + ": " + message;
    }
    // The scheduler never resumes a fiber of a failed launch: its stack is simply abandoned.
    for (;;) switch_to_scheduler();
}

void check_barrier_complete() {
    Launch &l = *launch;
    if (l.barrier_arrived == 0) return;
    if (l.exited > 0) {
        const Fiber &waiter = l.fibers[l.barrier_first_thread];
        for (const Fiber &f : l.fibers)
            if (f.state == EXITED)
                fail("thread (" + std::to_string(f.pub.thread_idx.x) + "," + std::to_string(f.pub.thread_idx.y) + "," +
                     std::to_string(f.pub.thread_idx.z) + ") exited while " + describe_thread(waiter) +
                     " waits at __syncthreads at " + describe_loc(l.barrier_loc));
    }
    if (l.barrier_arrived < l.threads_per_block) return;
    for (Fiber &f : l.fibers) {
        f.state = RUNNABLE;
        f.warp_result = (uint64_t)l.barrier_accum;
    }
    l.barrier_arrived = 0;
}

int barrier(BarrierKind kind, int predicate, SourceLoc loc) {
    Launch &l = *launch;
    Fiber &f = self();
    if (l.barrier_arrived == 0) {
        l.barrier_loc = loc;
        l.barrier_kind = kind;
        l.barrier_first_thread = f.linear;
        l.barrier_accum = kind == BARRIER_AND ? 1 : 0;
    } else if (!same_loc(loc, l.barrier_loc) || kind != l.barrier_kind) {
        fail("__syncthreads at " + describe_loc(loc) + " while " + describe_thread(l.fibers[l.barrier_first_thread]) +
             " waits at a different __syncthreads at " + describe_loc(l.barrier_loc) + " (divergent barrier)");
    }
    int p = predicate != 0;
    if (kind == BARRIER_COUNT) l.barrier_accum += p;
    if (kind == BARRIER_AND) l.barrier_accum &= p;
    if (kind == BARRIER_OR) l.barrier_accum |= p;
    l.barrier_arrived++;
    f.state = AT_BARRIER;
    check_barrier_complete();
    // Always yield, even as the last arrival, so that the schedule order decides who runs next.
    switch_to_scheduler();
    return (int)f.warp_result;
}

std::string hex(unsigned v) {
    char b[16];
    snprintf(b, sizeof b, "0x%08x", v);
    return b;
}

uint64_t finish_warp_op(const WarpOp &op, int lane, int warp_base) {
    int w = op.width;
    int seg = (lane / w) * w;
    int src = lane;
    int arg = op.args[lane];
    switch (op.kind) {
        case WARP_SHFL_IDX: src = seg + (((arg % w) + w) % w); break;
        case WARP_SHFL_UP: src = lane - arg < seg ? lane : lane - arg; break;
        case WARP_SHFL_DOWN: src = lane + arg >= seg + w ? lane : lane + arg; break;
        case WARP_SHFL_XOR: src = (lane ^ arg) >= seg + w ? lane : (lane ^ arg); break;
        case WARP_BALLOT:
        case WARP_ANY:
        case WARP_ALL: {
            unsigned votes = 0;
            for (int i = 0; i < 32; i++)
                if ((op.mask >> i & 1u) && op.values[i]) votes |= 1u << i;
            if (op.kind == WARP_BALLOT) return votes;
            if (op.kind == WARP_ANY) return votes != 0;
            return votes == op.mask;
        }
        case WARP_SYNC: return 0;
    }
    if (src < 0 || src > 31 || !(op.mask >> src & 1u))
        fail("warp shuffle at " + describe_loc(op.loc) + ": thread " + std::to_string(warp_base + lane) + " (lane " + std::to_string(lane) + ") reads lane " +
             std::to_string(src) + ", which is not in the mask " + hex(op.mask));
    return op.values[src];
}

}  // namespace

extern "C" void simt_fiber_main(Fiber *fiber) {
    current_fiber = &fiber->pub;
    launch->kernel(launch->args);
    // The thread exits. Nobody may be waiting for it.
    Launch &l = *launch;
    current_fiber = &fiber->pub;
    fiber->state = EXITED;
    l.exited++;
    int warp = fiber->linear / 32, lane = fiber->linear % 32;
    for (const WarpOp &op : l.warp_ops[warp])
        if (op.mask >> lane & 1u)
            fail("thread exited while its lane is named in the mask " + hex(op.mask) + " of a warp collective at " +
                 describe_loc(op.loc) + " that other lanes wait in");
    check_barrier_complete();
    for (;;) switch_to_scheduler();
}

#if !SIMT_ASM_FIBERS
static void ucontext_entry(unsigned lo, unsigned hi) {
    simt_fiber_main(reinterpret_cast<Fiber *>(((uintptr_t)hi << 32) | lo));
}
#endif

void syncthreads(SourceLoc loc) { barrier(BARRIER_PLAIN, 0, loc); }
int syncthreads_count(int p, SourceLoc loc) { return barrier(BARRIER_COUNT, p, loc); }
int syncthreads_and(int p, SourceLoc loc) { return barrier(BARRIER_AND, p, loc); }
int syncthreads_or(int p, SourceLoc loc) { return barrier(BARRIER_OR, p, loc); }

uint64_t warp_collective(WarpOpKind kind, unsigned mask, uint64_t value, int arg, int width, SourceLoc loc) {
    Launch &l = *launch;
    Fiber &f = self();
    int warp = f.linear / 32, lane = f.linear % 32, warp_base = warp * 32;
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        fail("warp shuffle at " + describe_loc(loc) + " has width " + std::to_string(width) + ", not a power of two <= 32");
    if (!(mask >> lane & 1u))
        fail("warp collective at " + describe_loc(loc) + " with mask " + hex(mask) + " that does not name the calling lane " +
             std::to_string(lane));
    for (int i = 0; i < 32; i++) {
        if (!(mask >> i & 1u)) continue;
        if ((unsigned)(warp_base + i) >= l.threads_per_block)
            fail("warp collective at " + describe_loc(loc) + " with mask " + hex(mask) + " names lane " + std::to_string(i) +
                 ", which does not exist (the block has " + std::to_string(l.threads_per_block) + " threads)");
        if (l.fibers[warp_base + i].state == EXITED)
            fail("warp collective at " + describe_loc(loc) + " with mask " + hex(mask) + " names lane " + std::to_string(i) +
                 ", which has exited");
    }
    std::vector<LocHistory> &history = l.warp_history[warp];
    LocHistory *seen = nullptr;
    for (LocHistory &h : history)
        if (same_loc(h.loc, loc)) seen = &h;
    if (!seen) {
        history.push_back(LocHistory{loc, {}, {}});
        seen = &history.back();
    }
    for (int i = 0; i < 32; i++)
        if ((mask >> i & 1u) && seen->count[i] > seen->count[lane])
            fail("warp collective at " + describe_loc(loc) + " with mask " + hex(mask) + " names lane " + std::to_string(i) +
                 ", which already went through it with mask " + hex(seen->mask[i]) + " (mismatched masks)");
    std::vector<WarpOp> &pending = l.warp_ops[warp];
    WarpOp *op = nullptr;
    for (WarpOp &p : pending) {
        if (!(p.mask & mask)) continue;
        if (p.mask != mask)
            fail("warp collective at " + describe_loc(loc) + " with mask " + hex(mask) +
                 " meets lanes waiting at " + describe_loc(p.loc) + " with mask " + hex(p.mask) + " (mismatched masks)");
        if (p.kind != kind || !same_loc(p.loc, loc) || p.width != width)
            fail("warp collective at " + describe_loc(loc) + " while lanes of mask " + hex(mask) + " wait at a different one at " +
                 describe_loc(p.loc));
        op = &p;
        break;
    }
    if (!op) {
        pending.push_back(WarpOp{kind, mask, 0u, loc, width, {}, {}});
        op = &pending.back();
    }
    op->values[lane] = value;
    op->args[lane] = arg;
    op->arrived |= 1u << lane;
    f.state = AT_WARP_OP;
    if (op->arrived == mask) {
        WarpOp done = *op;
        pending.erase(pending.begin() + (op - pending.data()));
        for (int i = 0; i < 32; i++) {
            if (!(mask >> i & 1u)) continue;
            seen->count[i]++;
            seen->mask[i] = mask;
            Fiber &g = l.fibers[warp_base + i];
            g.warp_result = finish_warp_op(done, i, warp_base);
            g.state = RUNNABLE;
        }
    }
    switch_to_scheduler();
    return f.warp_result;
}

unsigned active_mask() {
    Launch &l = *launch;
    Fiber &f = self();
    int warp_base = f.linear / 32 * 32;
    unsigned m = 0;
    for (int i = 0; i < 32 && (unsigned)(warp_base + i) < l.threads_per_block; i++)
        if (l.fibers[warp_base + i].state != EXITED) m |= 1u << i;
    return m;
}

void *dynamic_shared() {
    if (launch->shared_bytes == 0) fail("dynamic shared memory used, but the launch asked for 0 bytes of it");
    return launch->dynamic_shared.data();
}

void kernel_error(const char *message, SourceLoc loc) { fail(std::string(message) + " at " + describe_loc(loc)); }

namespace {

// A small deterministic generator for the random schedule (xorshift64*).
struct Rng {
    uint64_t s;
    uint64_t next() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return s * 2685821657736338717ull;
    }
};

int run_block(Launch &l, int schedule, uint64_t seed, uint64_t block_linear) {
    unsigned n = l.threads_per_block;
    poisoned_static_shared.clear();
#if SIMT_ASM_FIBERS
    uint32_t csr[2];
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(csr[1]));
    const uint64_t control_words = (uint64_t)csr[0] | ((uint64_t)(csr[1] & 0xffffu) << 32);
#endif
    uint3 idx = {0, 0, 0};  // thread t's index, counted up x first (no divisions per fiber)
    for (unsigned t = 0; t < n; t++) {
        Fiber &f = l.fibers[t];
        f.linear = (int)t;
        f.pub.thread_idx = idx;
        if (++idx.x == current_block_dim.x) {
            idx.x = 0;
            if (++idx.y == current_block_dim.y) {
                idx.y = 0;
                idx.z++;
            }
        }
        f.state = RUNNABLE;
        f.stack_base = stack_pool.stacks[t].first;
        f.stack_bytes = stack_pool.stacks[t].second;
        char *top = (char *)f.stack_base + f.stack_bytes;
#if SIMT_ASM_FIBERS
        // Frame that simt_switch_stack pops: control words, r15..rbp, then the return address.
        uint64_t *sp = (uint64_t *)top;
        *--sp = (uint64_t)(uintptr_t)&simt_fiber_entry;  // at top-8: after `ret`, rsp is 16-aligned
        *--sp = 0;                                       // rbp
        *--sp = 0;                                       // rbx
        *--sp = (uint64_t)(uintptr_t)&f;                 // r12: the fiber, handed to simt_fiber_main
        *--sp = 0;                                       // r13
        *--sp = 0;                                       // r14
        *--sp = 0;                                       // r15
        *--sp = control_words;
        f.context.sp = sp;
#else
        ucontext_t &uc = f.context.uc;
        getcontext(&uc);
        uc.uc_stack.ss_sp = (char *)f.stack_base + page_size();
        uc.uc_stack.ss_size = f.stack_bytes - page_size();
        uc.uc_link = nullptr;
        uintptr_t p = (uintptr_t)&f;
        makecontext(&uc, (void (*)())ucontext_entry, 2, (unsigned)(p & 0xffffffffu), (unsigned)(p >> 32));
#endif
    }
    for (auto &w : l.warp_ops) w.clear();
    for (auto &h : l.warp_history) h.clear();
    l.barrier_arrived = 0;
    l.exited = 0;
    if (l.shared_bytes > 0) {
        // NaN-fill dynamic shared memory, so reading what no thread wrote shows up in results.
        const uint32_t nan_bits = 0x7fc00000u;
        for (size_t i = 0; i + 4 <= l.dynamic_shared.size(); i += 4) std::memcpy(&l.dynamic_shared[i], &nan_bits, 4);
    }

    std::vector<unsigned> &order = l.order;
    order.resize(n);
    for (unsigned t = 0; t < n; t++) order[t] = schedule == 1 ? n - 1 - t : t;
    Rng rng{(seed ^ (block_linear * 0x9e3779b97f4a7c15ull)) | 1ull};
    for (;;) {
        if (schedule == 2)
            for (unsigned i = n - 1; i > 0; i--) std::swap(order[i], order[rng.next() % (i + 1)]);
        // Run the round's first runnable fiber; the fibers hand over to each other
        // (switch_to_scheduler) and the last comes back here.
        bool progressed = false;
        for (l.cursor = 0; l.cursor < n; l.cursor++) {
            Fiber &f = l.fibers[order[l.cursor]];
            if (f.state != RUNNABLE) continue;
            progressed = true;
            current_fiber = &f.pub;
            switch_context(l.scheduler, f.context);
            break;
        }
        if (l.failed) return 1;
        if (l.exited == (int)n) return 0;
        if (!progressed) {
            std::string waits;
            for (const Fiber &f : l.fibers) {
                if (f.state == AT_BARRIER) waits = "threads wait at __syncthreads at " + describe_loc(l.barrier_loc);
                if (f.state == AT_WARP_OP && waits.empty()) waits = "threads wait in a warp collective";
            }
            l.failed = true;
            char b[128];
            snprintf(b, sizeof b, ", block (%u,%u,%u): deadlock: ", current_block_idx.x, current_block_idx.y,
                     current_block_idx.z);
            l.error = std::string("kernel ") + l.kernel_name + b + waits + " that can never complete";
            return 1;
        }
    }
}

// ---------------------------------------------------------------- blocks across OS threads
// One launch's blocks, handed out in order by an atomic counter to every thread that takes
// part (the caller and the pool's workers). Each thread runs its blocks with its own Launch,
// fiber stacks and static shared memory (all thread-local), so blocks never share simulator
// state; which thread runs which block, and when, varies from run to run.
struct BlockJob {
    void (*kernel)(void **);
    void **args;
    const char *kernel_name;
    dim3 grid, block;
    unsigned shared_bytes;
    int schedule;
    uint64_t seed;
    const uint64_t *blocks;  // linear block indices to run, in this order; null: all of them
    uint64_t count;
    uint32_t mxcsr;  // the caller's floating-point control, so every thread rounds alike
    std::atomic<uint64_t> next{0};
    // The first failure in block order wins, as on one thread: every block before it was
    // handed out before it, so it ran to the end and would have reported first.
    std::atomic<uint64_t> failed_at{UINT64_MAX};
    std::mutex error_mutex;
    std::string error;

    void fail_at(uint64_t i, const std::string &message) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (i < failed_at.load()) {
            failed_at.store(i);
            error = message;
        }
    }
};

// `caller`: the thread that called simt_launch. A helper that cannot map its fiber stacks takes
// no block and leaves the work to the others; the caller reports it.
void run_blocks(BlockJob &job, bool caller) {
#if defined(__x86_64__)
    uint32_t own_mxcsr;
    asm volatile("stmxcsr %0" : "=m"(own_mxcsr));
    asm volatile("ldmxcsr %0" : : "m"(job.mxcsr));
#endif
    unsigned threads = job.block.x * job.block.y * job.block.z;
    Launch l;
    l.kernel = job.kernel;
    l.args = job.args;
    l.kernel_name = job.kernel_name;
    l.threads_per_block = threads;
    l.fibers.resize(threads);
    l.warp_ops.resize((threads + 31) / 32);
    l.warp_history.resize((threads + 31) / 32);
    l.shared_bytes = job.shared_bytes;
    l.dynamic_shared.resize(((size_t)job.shared_bytes + 15) / 16 * 16);
    Launch *outer = launch;  // a kernel never launches another, but keep the slot tidy
    launch = &l;
    current_block_dim = job.block;
    current_grid_dim = job.grid;
    if (!stack_pool.ensure(threads)) {
        if (caller) job.fail_at(0, "simt: could not map fiber stacks");
    } else {
        for (;;) {
            uint64_t i = job.next.fetch_add(1);
            if (i >= job.count || i > job.failed_at.load()) break;
            uint64_t linear = job.blocks ? job.blocks[i] : i;
            current_block_idx = {(unsigned)(linear % job.grid.x), (unsigned)(linear / job.grid.x % job.grid.y),
                                 (unsigned)(linear / ((uint64_t)job.grid.x * job.grid.y))};
            l.failed = false;
            if (run_block(l, job.schedule, job.seed, linear) != 0) {
                job.fail_at(i, l.error);
                break;
            }
        }
    }
    launch = outer;
    current_fiber = nullptr;
#if defined(__x86_64__)
    asm volatile("ldmxcsr %0" : : "m"(own_mxcsr));
#endif
}

// Worker threads that wait for a job. One launch uses the pool at a time; a launch from
// another host thread meanwhile runs its blocks on its own thread. Launches come in quick
// succession (thousands a training step), so a worker spins briefly before it sleeps, and so
// does the caller waiting for the workers: a futex wake-up on every launch would cost more
// than many small launches take.
struct Pool {
    std::mutex in_use;
    std::mutex m;
    std::condition_variable wake, done;
    std::vector<std::thread> workers;
    BlockJob *job = nullptr;  // set under m before the generation changes
    unsigned wanted = 0;      // workers taking part in the current job
    std::atomic<uint64_t> generation{0};
    std::atomic<unsigned> finished{0};

    static constexpr int SPINS = 300;  // a few microseconds (300 to 1000 measured best)

    static void relax() {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#else
        std::this_thread::yield();
#endif
    }

    void worker(unsigned index) {
        uint64_t seen = 0;
        for (;;) {
            for (int i = 0; i < SPINS && generation.load(std::memory_order_acquire) == seen; i++) relax();
            BlockJob *j;
            unsigned w;
            {
                std::unique_lock<std::mutex> lock(m);
                wake.wait(lock, [&] { return generation.load() != seen; });
                seen = generation.load();
                j = job;
                w = wanted;
            }
            if (index >= w) continue;
            run_blocks(*j, false);
            if (finished.fetch_add(1) + 1 == w) {
                std::lock_guard<std::mutex> lock(m);
                done.notify_one();
            }
        }
    }

    // Runs the job on the caller and `helpers` workers; returns when every block has finished.
    void run(BlockJob &j, unsigned helpers) {
        {
            std::lock_guard<std::mutex> lock(m);
            try {
                while (workers.size() < helpers) {
                    unsigned index = (unsigned)workers.size();
                    workers.emplace_back([this, index] { worker(index); });
                }
            } catch (const std::system_error &) {
                helpers = (unsigned)workers.size();  // the OS gave no more threads: use those it gave
            }
            job = &j;
            wanted = helpers;
            finished.store(0);
            generation.fetch_add(1);
        }
        wake.notify_all();
        run_blocks(j, true);
        for (int i = 0; i < SPINS && finished.load(std::memory_order_acquire) != helpers; i++) relax();
        std::unique_lock<std::mutex> lock(m);
        done.wait(lock, [&] { return finished.load() == helpers; });
    }
};

// Never destroyed: its workers wait for work until the process ends.
Pool &pool() {
    static Pool *p = new Pool;
    return *p;
}

}  // namespace
}  // namespace simt

// The C interface the Rust side calls. Runs the listed blocks (`blocks`, `block_count`), or
// the whole grid when `blocks` is null, on up to `threads` OS threads.
extern "C" int simt_launch(void (*kernel)(void **), void **args, const char *kernel_name, const unsigned grid[3],
                           const unsigned block[3], unsigned shared_bytes, int schedule, uint64_t seed,
                           const uint64_t *blocks, uint64_t block_count, unsigned threads, char *error,
                           size_t error_len) {
    using namespace simt;
    auto report = [&](const std::string &msg) {
        snprintf(error, error_len, "%s", msg.c_str());
        return 1;
    };
    unsigned block_threads = block[0] * block[1] * block[2];
    if (block_threads == 0 || block_threads > 1024)
        return report(std::string("kernel ") + kernel_name + ": block of " + std::to_string(block_threads) +
                      " threads (must be 1..1024)");
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0)
        return report(std::string("kernel ") + kernel_name + ": empty grid");

    if (blocks && block_count == 0) return 0;
    BlockJob job;
    job.kernel = kernel;
    job.args = args;
    job.kernel_name = kernel_name;
    job.grid = {grid[0], grid[1], grid[2]};
    job.block = {block[0], block[1], block[2]};
    job.shared_bytes = shared_bytes;
    job.schedule = schedule;
    job.seed = seed;
    job.blocks = blocks;
    job.count = blocks ? block_count : (uint64_t)grid[0] * grid[1] * grid[2];
    job.mxcsr = 0;
#if defined(__x86_64__)
    asm volatile("stmxcsr %0" : "=m"(job.mxcsr));
#endif
    // Each thread keeps a fiber stack per thread of the largest block it ran, two memory mappings
    // each (the stack and its guard page); Linux allows 65,530 per process by default. At most
    // 16,384 stacks in all: 16 threads of 1,024-thread blocks, every thread for smaller ones.
    const uint64_t max_threads = std::max<uint64_t>(1, 16384 / block_threads);
    uint64_t helpers = std::min<uint64_t>({(uint64_t)(threads > 0 ? threads : 1), max_threads, job.count}) - 1;
    Pool &p = pool();
    if (helpers > 0 && p.in_use.try_lock()) {
        p.run(job, (unsigned)helpers);
        p.in_use.unlock();
    } else {
        run_blocks(job, true);
    }
    if (job.failed_at.load() != UINT64_MAX) return report(job.error);
    return 0;
}
