/* Preloaded (LD_PRELOAD) by benchmarks/as_avx2.py: the process sees its CPU without AVX-512,
 * AVX-VNNI or AMX when it asks CPUID, as libraries do to pick their kernels (ONNX Runtime's
 * MLAS, OpenBLAS, oneDNN, LLVM's host features). With GRAPHOPT_AS_AVX2=avx_vnni in the
 * environment it keeps AVX-VNNI (256-bit vpdpbusd): a CPU like Alder Lake or Sierra Forest.
 *
 * Linux makes CPUID fault for a thread that asks (arch_prctl ARCH_SET_CPUID 0, on CPUs or
 * hypervisors with CPUID faulting: "cpuid_fault" in /proc/cpuinfo); threads started later
 * inherit it. The SIGSEGV handler below answers each fault: it lets this thread run the real
 * CPUID, clears the hidden features' bits from leaf 7 and steps over the instruction. Other
 * faults go to the handler the program installed, which `sigaction` and `signal` record
 * instead of installing (a library that installs a crash handler would otherwise take the
 * CPUID faults too). The instructions themselves still run: only what CPUID reports changes.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

/* Leaf 7, subleaf 0. EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL. ECX: VBMI, VBMI2, VNNI,
 * BITALG, VPOPCNTDQ. EDX: VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8. */
#define HIDDEN_7_0_EBX (1u << 16 | 1u << 17 | 1u << 21 | 1u << 26 | 1u << 27 | 1u << 28 | \
                        1u << 30 | 1u << 31)
#define HIDDEN_7_0_ECX (1u << 1 | 1u << 6 | 1u << 11 | 1u << 12 | 1u << 14)
#define HIDDEN_7_0_EDX (1u << 8 | 1u << 22 | 1u << 23 | 1u << 24 | 1u << 25)
/* Leaf 7, subleaf 1. EAX: AVX-VNNI, AVX512-BF16. */
#define HIDDEN_7_1_EAX (1u << 4 | 1u << 5)

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
static struct sigaction program_handler;   /* the SIGSEGV handler the program asked for */
static int active;
static unsigned hidden_7_1_eax = HIDDEN_7_1_EAX;
static unsigned long faults;   /* CPUID instructions answered */

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *regs = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {   /* not CPUID: the program's fault */
        if (program_handler.sa_flags & SA_SIGINFO) {
            program_handler.sa_sigaction(sig, info, context);
        } else if (program_handler.sa_handler != SIG_DFL &&
                   program_handler.sa_handler != SIG_IGN) {
            program_handler.sa_handler(sig);
        } else {   /* the default action: returning re-runs the instruction, which ends it */
            struct sigaction dfl;
            memset(&dfl, 0, sizeof dfl);
            dfl.sa_handler = SIG_DFL;
            real_sigaction(SIGSEGV, &dfl, NULL);
        }
        return;
    }
    unsigned leaf = (unsigned)regs[REG_RAX], subleaf = (unsigned)regs[REG_RCX], a, b, c, d;
    __atomic_add_fetch(&faults, 1, __ATOMIC_RELAXED);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, subleaf, a, b, c, d);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    if (leaf == 7 && subleaf == 0) {
        b &= ~HIDDEN_7_0_EBX;
        c &= ~HIDDEN_7_0_ECX;
        d &= ~HIDDEN_7_0_EDX;
    } else if (leaf == 7 && subleaf == 1) {
        a &= ~hidden_7_1_eax;
    }
    regs[REG_RAX] = a;
    regs[REG_RBX] = b;
    regs[REG_RCX] = c;
    regs[REG_RDX] = d;
    regs[REG_RIP] += 2;
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV || !active) return real_sigaction(sig, act, old);
    if (old) *old = program_handler;
    if (act) program_handler = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
    return (old.sa_flags & SA_SIGINFO) ? (sighandler_t)old.sa_sigaction : old.sa_handler;
}

/* Whether CPUID faults in this process (1), else 0: the CPU or kernel cannot make it. */
int cpuid_mask_active(void) { return active; }

/* How many CPUID instructions this process ran (each a fault: microseconds, not nanoseconds). */
unsigned long cpuid_mask_faults(void) { return __atomic_load_n(&faults, __ATOMIC_RELAXED); }

__attribute__((constructor)) static void start(void) {
    real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    const char *mode = getenv("GRAPHOPT_AS_AVX2");
    if (mode && strcmp(mode, "avx_vnni") == 0) hidden_7_1_eax &= ~(1u << 4);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    real_sigaction(SIGSEGV, &sa, &program_handler);
    active = syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) == 0;
}
