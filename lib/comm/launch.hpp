// Starting workers: knowing whether this process was started by a launcher (mpirun, srun) as
// one rank of a job, and otherwise building and running the mpirun or srun command that starts
// one worker per rank, on the hosts a plan names.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace smp::comm {

struct LaunchInfo {
  std::string launcher;  // "mpirun", "srun", "local" (smp's own), or "" when started by hand
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  bool under_launcher() const { return !launcher.empty(); }
};

// From the environment: smp's local launcher's SMP_LOCAL_RANK / SMP_LOCAL_SIZE, Open MPI's
// OMPI_COMM_WORLD_*, PMIx's PMIX_RANK, Slurm's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (the
// tasks on this node from SLURM_STEP_TASKS_PER_NODE), or generic PMI_RANK / PMI_SIZE.
LaunchInfo detect_launch();

// ---- hosts ----------------------------------------------------------------------------------

struct HostSlots {
  std::string name;
  int slots = 0;  // 0: not stated
};

// An Open MPI hostfile: "NAME [slots=N] [max_slots=N]" per line, '#' comments, blank lines; a
// host named twice adds its slots (unknown when one line does not state them). Bad input naming
// the file and line.
std::vector<HostSlots> read_hostfile(const std::string& path);

// A Slurm host list ("node[01-03,07],gpu5") expanded in order; bad input naming `where`.
std::vector<std::string> expand_hostlist(const std::string& list, const std::string& where = "SLURM_JOB_NODELIST");
// Slurm's per-node counts ("2(x3),1") expanded: {2, 2, 2, 1}; bad input naming `where`.
std::vector<int> expand_counts(const std::string& counts, const std::string& where = "SLURM_JOB_CPUS_PER_NODE");

// Inside a Slurm allocation (salloc, sbatch) and not one of its tasks: its nodes in order
// (SLURM_JOB_NODELIST) with the CPUs Slurm gave the job on each (SLURM_JOB_CPUS_PER_NODE) as
// slots; empty outside one.
std::vector<HostSlots> slurm_allocation();

// A rank as a plan places it: on host `host` (the plan's name for it), device `device` of the
// plan's cluster (devices are numbered host by host).
struct PlannedRank {
  std::string host;
  int device = 0;
};

struct Placement {
  std::vector<std::string> host_of_rank;  // real host names, one per rank
  int plan_hosts = 0;                     // hosts the plan uses
  int hosts_given = 0;                    // hosts offered
};

// Maps the plan's hosts, in the order of their devices, onto `hosts` in order: the plan's
// first host runs on hosts[0], its second on hosts[1], ... Bad input (naming `where`) when the
// plan uses more hosts than offered, or puts more ranks on one than its stated slots.
Placement place_ranks(const std::vector<PlannedRank>& ranks, const std::vector<HostSlots>& hosts, const std::string& where,
                      bool check_slots = true);

// ---- launch commands ------------------------------------------------------------------------

struct MpirunOptions {
  int ranks = 1;
  std::string hostfile;          // passed through as --hostfile when set
  bool sequential = false;       // the hostfile names the host of each rank, one line per rank
                                 // (Open MPI's seq mapper)
  bool quiet = true;             // -q: no help messages (a caller that reads them passes false)
  int cores = 0;                 // cores of this machine (0: detect); more ranks oversubscribe
  std::vector<std::string> extra;  // more mpirun arguments, before the program
  int cross_memory_attach = -1;  // 1 allowed, 0 forbidden, -1 detect (cross_memory_attach_works())
  // One machine: a directory of this job's own for Open MPI's session files (orte_tmpdir_base).
  // Jobs started at once otherwise share /tmp/ompi.HOST.UID, and one's clean-up can remove it
  // while another creates it ("A call to mkdir was unable to create the desired directory ...
  // File exists", open-mpi/ompi#8510). Empty: Open MPI's default; a user's
  // OMPI_MCA_orte_tmpdir_base wins.
  std::string session_dir;
};

// Whether one process can read another's memory (process_vm_readv) as Open MPI's shared-memory
// transport does between sibling ranks; containers without ptrace rights forbid it. Tried once
// per process (two forked children), then remembered.
bool cross_memory_attach_works();

struct SrunOptions {
  int ranks = 1;
  std::string rank_hostfile;  // one line per rank: its host (srun --distribution=arbitrary)
  int nodes = 1;              // distinct hosts in it
  bool overcommit = false;    // more tasks on a node than the CPUs the allocation gave
  std::vector<std::string> extra;  // more srun arguments, before the program
};

struct Command {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // set in the child's environment
  std::vector<std::string> unset_env;       // removed from it
  // When set, the child's stderr passes through this process line by line as this returns it:
  // the line itself, nothing (dropped), or lines it held back before. It is called once more
  // with an empty line when the stream ends.
  std::function<std::string(std::string_view line)> filter_stderr;
  // How SIGINT / SIGTERM sent to this process reach the child. 0: forwarded to the child's
  // process group as they are. Otherwise each (and SIGUSR1) is a stop request: this signal goes
  // to the child alone
  // (mpirun and srun forward SIGUSR1 to every worker on every host), once `stop_ready` (when
  // set) says the workers can take it; a second SIGINT stops the child (abort_signal, then
  // SIGKILL to its group after 5 s).
  int stop_signal = 0;
  int abort_signal = 15;  // SIGTERM: mpirun takes its job down on every host
  std::function<bool()> stop_ready;
  // Called (on the waiting thread) for each SIGINT / SIGTERM (/ SIGUSR1) received while the
  // child runs.
  std::function<void(int sig)> on_signal;
};

// Open MPI's shared-memory transport complaining that a peer's memory could not be read because
// the peer process is gone ("[host:pid] Read -1, expected 327680, errno = 3"): noise once a
// worker has died, which the launcher reports itself.
bool is_dead_peer_read_error(std::string_view line);

// The mpirun command line that runs `program` with `args` as `ranks` processes: works as root,
// with more ranks than cores (no binding then), and in containers (without cross-memory attach
// where that is forbidden: then messages up to 1 MiB are sent eagerly).
Command mpirun_command(const MpirunOptions& o, const std::string& program, const std::vector<std::string>& args);

// srun inside an allocation: `ranks` tasks placed as rank_hostfile says, PMIx for Open MPI
// (unless SLURM_MPI_TYPE says otherwise), the step ended when a task fails, no stdin.
Command srun_command(const SrunOptions& o, const std::string& program, const std::vector<std::string>& args);

// Path of mpirun (MPIRUN env var, else the one on PATH); failure with a hint when absent.
std::string find_mpirun();
bool mpirun_available();

// ---- the local launcher: the ranks of one machine without MPI -------------------------------

// The argument that puts smp-run into its hidden supervisor mode: SELF --local-supervisor N --
// PROGRAM ARGS...
inline constexpr const char* kLocalSupervisorFlag = "--local-supervisor";

// The command that starts `program args` as `ranks` processes of this machine through
// `supervisor` (smp-run itself) in its hidden mode. They talk over comm::init_local().
Command local_command(int ranks, const std::string& supervisor, const std::string& program, const std::vector<std::string>& args);

// The hidden mode, run as the launcher's child: makes the rendezvous directory, starts the ranks
// (SMP_LOCAL_RANK, SMP_LOCAL_SIZE, SMP_LOCAL_DIR in their environment), passes SIGUSR1 on to
// them (a stop request), takes them down on SIGTERM / SIGINT (SIGTERM, SIGKILL 5 s later), and,
// as mpirun does, when one ends abnormally says so on stderr in one line that JobMonitor reads
// ("smp-local: rank 2 (pid 81) on node1 exited on signal 9 (Killed)") and ends the others
// (SIGTERM, SIGKILL 2 s later). Returns the first abnormal end (128 + signal, or the exit
// status), else 0. `argv`: PROGRAM ARGS...
int local_supervisor(int ranks, const std::vector<std::string>& argv);
// Path of srun (SRUN env var, else the one on PATH); failure with a hint when absent.
std::string find_srun();

// Runs the command as a child in its own process group, passing SIGINT / SIGTERM on as
// Command says, and returns its exit status (128 + signal when killed). When it ends, any process left in its
// group is killed, so that no worker outlives the job. `stuck`, when given, is asked every
// 100 ms while the child runs; when it says true the child's group is killed (a launcher that
// hangs after its workers are gone).
int run_command(const Command& c, const std::function<bool()>& stuck = {});

// This machine's online cores (respecting the CPU affinity mask).
int online_cores();

}  // namespace smp::comm
