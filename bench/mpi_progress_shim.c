/* Diagnostic for bench/profile_accuracy.sh (not part of smp): LD_PRELOAD'ed into smp-run's
 * workers, it asks MPI for MPI_THREAD_MULTIPLE and runs a thread that drives MPI's progress
 * engine every ~50 us (MPI_Iprobe), so that a large message posted with isend moves while its
 * sender computes. With Open MPI's ob1/vader a rendezvous message otherwise moves only when the
 * sender next enters MPI; in a pipeline that stalls the receiver for one compute phase.
 *
 *   mpicc -shared -fPIC -O2 -o mpi_progress_shim.so bench/mpi_progress_shim.c -lpthread
 *   LD_PRELOAD=$PWD/mpi_progress_shim.so smp-run plan.json ...
 */
#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

static atomic_int stop_flag;
static pthread_t progress_thread;
static int started;

static void* progress(void* arg) {
  (void)arg;
  while (!atomic_load(&stop_flag)) {
    int flag = 0;
    MPI_Status st;
    PMPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st);
    usleep(50);
  }
  return NULL;
}

int MPI_Init_thread(int* argc, char*** argv, int required, int* provided) {
  (void)required;
  int r = PMPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, provided);
  if (r == MPI_SUCCESS && *provided == MPI_THREAD_MULTIPLE && pthread_create(&progress_thread, NULL, progress, NULL) == 0)
    started = 1;
  return r;
}

int MPI_Finalize(void) {
  if (started) {
    atomic_store(&stop_flag, 1);
    pthread_join(progress_thread, NULL);
  }
  return PMPI_Finalize();
}
