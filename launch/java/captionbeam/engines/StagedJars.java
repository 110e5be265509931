package captionbeam.engines;

import java.io.File;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsRegistrar;
import org.apache.beam.sdk.util.construction.resources.PipelineResourcesDetector;
import org.apache.beam.sdk.util.construction.resources.PipelineResourcesOptions;

/**
 * What a Beam job server stages with each job: the jars named by the system property {@code
 * captionbeam.stagedJars} (path-separated; empty: none), not every jar of the job server's own class path.
 *
 * <p>Beam's Flink job server stages its whole class path by default (its ~160 jars, 150 MiB), uploaded to the
 * JobManager's blob server and fetched by every TaskManager at every job. The cluster of {@code make cluster}
 * has Beam's runner classes on its JobManager's and TaskManagers' own class path, so its job server stages
 * nothing. Chosen per job with {@code --pipelineResourcesDetectorFactoryClass=captionbeam.engines.StagedJars$Factory}
 * (the {@code flink-cluster} profile).
 */
public class StagedJars implements PipelineResourcesDetector {
  public static final String PROPERTY = "captionbeam.stagedJars";

  @Override
  public List<String> detect(ClassLoader classLoader) {
    List<String> jars = new ArrayList<>();
    for (String jar : System.getProperty(PROPERTY, "").split(File.pathSeparator)) {
      if (!jar.isEmpty()) {
        jars.add(jar);
      }
    }
    return jars;
  }

  /** Beam's {@code PipelineResourcesOptions} builds the detector through this factory's {@code create()}. */
  public static class Factory implements PipelineResourcesDetector.Factory {
    public static Factory create() {
      return new Factory();
    }

    @Override
    public PipelineResourcesDetector getPipelineResourcesDetector() {
      return new StagedJars();
    }
  }

  /** Registers Beam's {@code PipelineResourcesOptions} (found through {@code META-INF/services}). */
  public static class Registrar implements PipelineOptionsRegistrar {
    @Override
    public Iterable<Class<? extends PipelineOptions>> getPipelineOptions() {
      return Collections.singletonList(PipelineResourcesOptions.class);
    }
  }
}
