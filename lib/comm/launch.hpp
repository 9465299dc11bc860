// Starting workers: knowing whether this process was started by a launcher (mpirun, srun) as
// one rank of a job, and otherwise building and running the mpirun command that starts one
// worker per rank.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace smp::comm {

struct LaunchInfo {
  std::string launcher;  // "mpirun", "srun", or "" when started by hand
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  bool under_launcher() const { return !launcher.empty(); }
};

// From the environment: Open MPI's OMPI_COMM_WORLD_*, PMIx's PMIX_RANK, Slurm's SLURM_PROCID /
// SLURM_NTASKS / SLURM_LOCALID, or generic PMI_RANK / PMI_SIZE.
LaunchInfo detect_launch();

struct MpirunOptions {
  int ranks = 1;
  std::string hostfile;          // passed through as --hostfile when set
  int cores = 0;                 // cores of this machine (0: detect); more ranks oversubscribe
  std::vector<std::string> extra;  // more mpirun arguments, before the program
  int cross_memory_attach = -1;  // 1 allowed, 0 forbidden, -1 detect (cross_memory_attach_works())
};

// Whether one process can read another's memory (process_vm_readv) as Open MPI's shared-memory
// transport does between sibling ranks; containers without ptrace rights forbid it. Tried once
// per process (two forked children), then remembered.
bool cross_memory_attach_works();

struct Command {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // set in the child's environment
  // When set, the child's stderr passes through this process line by line, without the lines
  // it returns true for.
  std::function<bool(std::string_view line)> drop_stderr;
};

// Open MPI's shared-memory transport complaining that a peer's memory could not be read because
// the peer process is gone ("[host:pid] Read -1, expected 327680, errno = 3"): noise once a
// worker has died, which the launcher reports itself.
bool is_dead_peer_read_error(std::string_view line);

// The mpirun command line that runs `program` with `args` as `ranks` processes: works as root,
// with more ranks than cores (no binding then), and in containers (without cross-memory attach
// where that is forbidden: then messages up to 1 MiB are sent eagerly).
Command mpirun_command(const MpirunOptions& o, const std::string& program, const std::vector<std::string>& args);

// Path of mpirun (MPIRUN env var, else the one on PATH); failure with a hint when absent.
std::string find_mpirun();

// Runs the command as a child in its own process group, forwarding SIGINT / SIGTERM to it, and
// returns its exit status (128 + signal when killed). When it ends, any process left in its
// group is killed, so that no worker outlives the job. `stuck`, when given, is asked every
// 100 ms while the child runs; when it says true the child's group is killed (a launcher that
// hangs after its workers are gone).
int run_command(const Command& c, const std::function<bool()>& stuck = {});

// This machine's online cores (respecting the CPU affinity mask).
int online_cores();

}  // namespace smp::comm
