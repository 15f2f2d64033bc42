"""
Launch the anytime_infer node with a params file, a namespace and camera remaps.

ros2 launch anytime_infer anytime_infer.launch.py namespace:=car \
    camera_front:=/car/front/image_raw camera_rear:=/car/rear/image_raw

The node is named ``anytime_infer`` and placed in ``namespace`` (``/car/anytime_infer``);
the params file is keyed ``/**`` so its values apply under any namespace. Outputs follow
the cameras as remapped: ``/car/front/image_raw`` is answered on ``/car/front/detections``
(and ``/car/front/detections_2d`` where vision_msgs is installed).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    """Node anytime_infer with its YAML, in a namespace, remapping the two camera topics."""
    default_params = os.path.join(get_package_share_directory('anytime_infer'), 'config',
                                  'anytime_infer.yaml')
    args = [
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='parameters YAML (keyed /** to apply under any '
                                          'namespace)'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='node namespace (e.g. car: /car/anytime_infer)'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='follow /clock (bag replay)'),
        DeclareLaunchArgument('camera_front', default_value='camera_front/image_raw',
                              description='topic for the first camera'),
        DeclareLaunchArgument('camera_rear', default_value='camera_rear/image_raw',
                              description='topic for the second camera'),
    ]
    node = Node(
        package='anytime_infer', executable='anytime_infer_node', name='anytime_infer',
        namespace=LaunchConfiguration('namespace'), output='screen',
        parameters=[LaunchConfiguration('params_file'),
                    {'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                    value_type=bool)}],
        remappings=[('camera_front/image_raw', LaunchConfiguration('camera_front')),
                    ('camera_rear/image_raw', LaunchConfiguration('camera_rear'))])
    return LaunchDescription(args + [node])
